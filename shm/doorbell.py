"""Doorbell: wake a sleeping consumer when data is ready, over a pyzmq PUB/SUB ipc:// socket.

The producer binds <instance dir>/<channel>.bell; consumers connect. A ring carries at most a
few bytes (a packed SlotRef, a sequence number): the data itself stays in shared memory.
Consumers always check the data structure before sleeping, so a wake-up lost while a
subscription is being set up costs at most the reader's re-check interval, never data.
Create sockets after fork/spawn, in the process that uses them (zmq contexts do not survive fork).
"""
from __future__ import annotations

import asyncio
import os

import zmq

from ._paths import BELL_SUFFIX, channel_path, ipc_endpoint


def _endpoint(instance: str, name: str, root=None) -> tuple[str, str]:
    path = channel_path(instance, name, BELL_SUFFIX, root)
    return path, ipc_endpoint(path)


class Doorbell:
    """Producer side: ring(payload) wakes every connected listener."""

    def __init__(self, sock: zmq.Socket, path: str):
        self._sock = sock
        self.path = path

    @classmethod
    def bind(cls, instance: str, name: str, *, root=None, hwm: int = 10000) -> "Doorbell":
        from ._segment import require_instance_dir

        require_instance_dir(instance, root)
        path, ep = _endpoint(instance, name, root)
        sock = zmq.Context.instance().socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.bind(ep)  # libzmq replaces a stale socket file left by a crashed producer
        os.chmod(path, 0o600)
        return cls(sock, path)

    @classmethod
    def connect(cls, instance: str, name: str, *, root=None) -> "DoorbellListener":
        return DoorbellListener(instance, name, root=root)

    def ring(self, payload: bytes = b"") -> None:
        self._sock.send(payload, copy=True)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class DoorbellListener:
    """Consumer side: wait(timeout) sleeps in the kernel until the producer rings."""

    def __init__(self, instance: str, name: str, *, root=None, _ctx=None):
        _, ep = _endpoint(instance, name, root)
        ctx = _ctx or zmq.Context.instance()
        self._sock = ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 100000)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(ep)  # works before the producer binds: zmq keeps retrying

    def wait(self, timeout: float | None = None) -> list[bytes]:
        """Payloads of every ring received, waiting up to `timeout` s (None: forever) for the
        first; an empty list on timeout."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
        if not self._sock.poll(ms, zmq.POLLIN):
            return []
        return self.drain()

    def drain(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self._sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                return out

    def fileno(self) -> int:
        """The zmq notification fd, for callers that run their own poll loop."""
        return self._sock.getsockopt(zmq.FD)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


class AsyncDoorbellListener:
    """asyncio variant (zmq.asyncio) for the gateway's event loop."""

    def __init__(self, instance: str, name: str, *, root=None):
        import zmq.asyncio

        _, ep = _endpoint(instance, name, root)
        self._sock = zmq.asyncio.Context.instance().socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 100000)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(ep)

    async def wait(self, timeout: float | None = None) -> list[bytes]:
        try:
            first = await asyncio.wait_for(self._sock.recv(), timeout)
        except asyncio.TimeoutError:
            return []
        out = [first]
        while True:
            try:
                out.append(self._sock.recv(zmq.NOBLOCK).result())
            except zmq.Again:
                return out

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
