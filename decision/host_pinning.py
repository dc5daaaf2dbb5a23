"""Page-locked input pools for a decoder on the GPU.

The engine copies the embedding rows of an shm slot to the GPU in the step that first needs
them. From ordinary (pageable) memory the driver stages such a copy through a bounce buffer and
the step waits for it; with the pool's own pages locked (cudaHostRegister, once at start) it is
a DMA queued on the stream with the step's other work, and the slot is not given back before
it is done (decision.engine.request). The prompts pool is an input too and is locked along (8 MiB; its ids
never go to the GPU, but telling the pools apart would cost more code than the pages).
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
