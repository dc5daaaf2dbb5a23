"""Page-locked shm pools for a stage on the GPU.

A copy between an shm slot and the GPU from ordinary (pageable) memory goes through a driver
bounce buffer, and the stage waits for it; with the pool's own pages locked (cudaHostRegister,
once at start) it is a DMA. The decision stage locks its input pools: the engine copies a
request's embedding rows in the step that first needs them, queued with the step's other work,
and the slot is not given back before that copy is done (decision.engine.request); the prompts
pool is locked along (8 MiB; its ids never go to the GPU, but telling the pools apart would
cost more code than the pages). The vision stage locks its frames (copied in) and embeddings
(copied out) pools. Each process locks its own mapping of the pages.
"""
from __future__ import annotations

import torch

_DEFAULT_FLAGS = 0   # cudaHostRegisterDefault: this process, the current device


def _code(err) -> int:
    return int(getattr(err, "value", err))


def _clear_last_error() -> None:
    """Reset the CUDA runtime's last error: torch checks it after every kernel launch, and a
    failed registration must not surface there. torch exposes no cudaGetLastError, so it is
    called in the runtime library torch loaded (found in this process's mappings)."""
    import ctypes

    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "libcudart.so" in line}
    for path in paths:
        ctypes.CDLL(path).cudaGetLastError()


class PinnedPools:
    """The pools this process page-locked; unpin() before they are closed."""

    def __init__(self):
        self._addresses: list[int] = []

    def pin(self, pool) -> str | None:
        """Page-lock `pool`'s payload bytes; returns why not (the copy then stays a staged,
        waiting one) or None."""
        address, length = pool.data_region()
        err = _code(torch.cuda.cudart().cudaHostRegister(address, length, _DEFAULT_FLAGS))
        if err != 0:
            _clear_last_error()
            return f"cudaHostRegister of {pool.name!r} ({length >> 20} MiB) failed: CUDA error {err}"
        self._addresses.append(address)
        return None

    def unpin(self) -> None:
        for address in self._addresses:
            torch.cuda.cudart().cudaHostUnregister(address)
        self._addresses.clear()


def pin_pools(ctx, names) -> PinnedPools:
    """Page-lock the stage's pools among `names` (channels of kind "pool"); a pool that cannot
    be locked is said in the stage's log, and its copies stay staged ones."""
    pinned = PinnedPools()
    for name in names:
        if ctx.launch.channels[name].kind == "pool":
            problem = pinned.pin(ctx.pool(name))
            if problem:
                ctx.log(f"{problem}; its copies to and from the GPU wait for a staging buffer")
    return pinned
