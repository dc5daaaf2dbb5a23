"""The gateway's media preparation threads, pinned to cores that no stage is pinned to.

A screenshot's PNG decode takes 35 ms of a core (1080x2400 RGBA, the 2-core VM) and Pillow
releases the GIL while it decodes, but the gateway process is pinned to one core: requests from
several phones would decode one after another there, on the core the event loop needs for
streaming. A GPU host has many more cores than the pipeline has stages; with the threads on
the spare cores, each decode gets a core of its own.
"""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor


# As many as Starlette's pool had (anyio's default): a request in transcribe mode waits in its
# thread for the audio stage's transcript, so threads are not counted by cores.
MIN_THREADS = 40


class MediaWorkers:
    """Threads allowed on all of ``cores`` (the kernel spreads them), at least MIN_THREADS and
    one per core."""

    def __init__(self, cores) -> None:
        self.cores = sorted(set(int(c) for c in cores))
        if not self.cores:
            raise ValueError("MediaWorkers needs at least one core")
        # Said now, not by every request's first thread: cores this process may not use.
        own = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, self.cores)
        except OSError as exc:
            raise ValueError(f"media cores {self.cores} cannot be used here: {exc.strerror}") \
                from None
        finally:
            os.sched_setaffinity(0, own)
        # sched_setaffinity(0, ...) in a thread pins that thread only (Linux).
        self._pool = ThreadPoolExecutor(max_workers=max(MIN_THREADS, len(self.cores)),
                                        thread_name_prefix="media",
                                        initializer=os.sched_setaffinity,
                                        initargs=(0, self.cores))

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
