"""Ring wake-ups: one FIFO per blocked reader, poked by the ring's writer.

Why not the zmq doorbell (shm.doorbell, still available for general use): a zmq PUB/SUB
message crosses libzmq's I/O thread on both sides, three thread hand-offs per wake-up;
measured 28-49 us one-way on the 2-core CI machine against ~6 us for one byte through a FIFO,
which wakes the reader's poll() directly. A FIFO is also a plain fd, what asyncio's
loop.add_reader() takes, and it needs no context that breaks across fork.

Protocol. A reader about to block for the first time creates <ring>.wake-<k> (k: its entry in
the ring's consumer table), opens it read-write (so it never reads EOF, and a writer can open
it while the reader lives), marks its table entry and bumps the ring's wake generation, all
under the channel lock. The writer, after publishing records, re-reads the table whenever that
generation moved and writes one byte to each reader's FIFO, non-blocking: a full FIFO already
holds a pending wake-up. A dead reader's FIFO has no read end left: the write fails (EPIPE) and
the writer drops it. Readers re-check the ring every RECHECK_S regardless, so a wake-up lost
while a reader registers costs that interval once, never data.
"""
from __future__ import annotations

import asyncio
import errno
import os
import select
import struct

from ._paths import WAKE_SUFFIX, channel_path

# In the ring's header page, after the common header (which ends at byte 1192) and before
# the consumer table (byte 2048): bumped whenever a reader starts or stops wanting wake-ups.
WAKE_GEN_OFFSET = 1536
# In each 64-byte consumer-table entry, after pid, start, cursor, read, lost.
WAKE_FLAG_IN_ENTRY = 40
_U64 = struct.Struct("<Q")
_BYTE = b"\x01"


def wake_path(ring) -> str:
    return channel_path(ring.instance, ring.name, WAKE_SUFFIX, ring._root)


class WakeSender:
    """Writer side: wake() pokes every reader of the ring that waits on a FIFO."""

    def __init__(self, ring):
        self._ring = ring
        self._gen = -1
        self._fds: dict[int, int] = {}  # consumer-table index -> write end of its FIFO
        self._targets: tuple[tuple[int, int], ...] = ()

    def _refresh(self, gen: int) -> None:
        from .ring import CONSUMER_DTYPE, CONSUMERS_OFFSET, MAX_CONSUMERS

        self._close_fds()
        mm = self._ring._seg.mm
        prefix = wake_path(self._ring)
        for k in range(MAX_CONSUMERS):
            entry = CONSUMERS_OFFSET + k * CONSUMER_DTYPE.itemsize
            if not _U64.unpack_from(mm, entry)[0] or not _U64.unpack_from(mm, entry + WAKE_FLAG_IN_ENTRY)[0]:
                continue
            try:
                self._fds[k] = os.open(f"{prefix}{k}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:  # ENXIO: its reader died (no read end); ENOENT: it just left
                pass
        self._targets = tuple(self._fds.items())
        self._gen = gen

    def wake(self) -> None:
        gen = _U64.unpack_from(self._ring._seg.mm, WAKE_GEN_OFFSET)[0]
        if gen != self._gen:
            self._refresh(gen)
        for k, fd in self._targets:
            try:
                os.write(fd, _BYTE)
            except BlockingIOError:
                pass  # FIFO full: the reader has unconsumed wake-ups already
            except OSError:  # EPIPE: the reader is gone
                os.close(fd)
                del self._fds[k]
                self._targets = tuple(self._fds.items())

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._targets = ()

    def close(self) -> None:
        self._close_fds()


class WakeReceiver:
    """Reader side: a FIFO of its own that the writer pokes; wait() sleeps in poll()."""

    def __init__(self, ring, slot: int):
        from .ring import CONSUMER_DTYPE, CONSUMERS_OFFSET

        self._ring = ring
        self._flag = CONSUMERS_OFFSET + slot * CONSUMER_DTYPE.itemsize + WAKE_FLAG_IN_ENTRY
        self.path = f"{wake_path(ring)}{slot}"
        try:
            os.unlink(self.path)  # left by a dead reader of the same table entry
        except FileNotFoundError:
            pass
        os.mkfifo(self.path, 0o600)
        os.chmod(self.path, 0o600)  # mkfifo's mode is filtered by the umask
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)
        self._set_flag(1)

    def _set_flag(self, value: int) -> None:
        seg = self._ring._seg
        with seg:
            mm = seg.mm
            _U64.pack_into(mm, self._flag, value)
            _U64.pack_into(mm, WAKE_GEN_OFFSET, _U64.unpack_from(mm, WAKE_GEN_OFFSET)[0] + 1)

    def wait(self, timeout: float | None) -> bool:
        """Sleep until poked or `timeout` s pass (None: forever); True if poked."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
        if self._poll.poll(ms):
            self.drain()
            return True
        return False

    async def wait_async(self, timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(True)

        loop.add_reader(self.fd, ready)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            loop.remove_reader(self.fd)
        self.drain()
        return True

    def drain(self) -> None:
        try:
            while len(os.read(self.fd, 65536)) == 65536:
                pass
        except BlockingIOError:
            pass
        except OSError as e:  # pragma: no cover - only EAGAIN is expected on a live FIFO
            if e.errno != errno.EAGAIN:
                raise

    def close(self) -> None:
        if self.fd is None:
            return
        if self._ring._seg.mm is not None:  # else the ring was closed first: writers see EPIPE
            self._set_flag(0)
        os.close(self.fd)
        self.fd = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
