"""Control-plane reading for asyncio code (the gateway).

``AsyncReader`` runs one background thread that blocks in the reader's WaitSet (the wait
releases the GIL) and hands each message to the event loop through an asyncio.Queue with
``call_soon_threadsafe``. The event loop itself never blocks on DDS and no Cyclone
listener (receive-thread callback) is involved.

    async with AsyncReader(plane.reader(STAGE_EVENT)) as events:
        async for event in events:
            ...
"""
from __future__ import annotations

import asyncio
import threading

from .plane import Reader

_CLOSED = object()


class AsyncReader:
    """Async iteration over a ``control.plane.Reader``.

    Must be created (or ``start()``-ed) inside a running event loop. ``get(timeout)``
    returns the next message or raises asyncio.TimeoutError; iteration ends after
    ``close()`` or when the plane closes.
    """

    # How often the thread re-checks for close() when no data arrives.
    POLL_S = 0.2

    def __init__(self, reader: Reader, *, maxsize: int = 0) -> None:
        self.reader = reader
        self._queue: asyncio.Queue = asyncio.Queue(maxsize)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> "AsyncReader":
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._pump, name=f"dds-aio-{self.reader.spec.short_name}", daemon=True)
            self._thread.start()
        return self

    async def get(self, timeout: float | None = None):
        """The next message; asyncio.TimeoutError after ``timeout`` seconds."""
        self.start()
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # keep later get() calls ending too
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        return item

    def __aiter__(self):
        self.start()
        return self

    async def __anext__(self):
        return await self.get()

    async def close(self) -> None:
        self._stop.set()
        self.reader.wake()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    async def __aenter__(self) -> "AsyncReader":
        return self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _pump(self) -> None:
        loop = self._loop
        try:
            while not self._stop.is_set() and not self.reader.plane.closed:
                for msg in self.reader.take(timeout=self.POLL_S):
                    loop.call_soon_threadsafe(self._queue.put_nowait, msg)
        except BaseException as exc:  # surfaced to the awaiting coroutine
            self._error = exc
        finally:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._queue.put_nowait, _CLOSED)
