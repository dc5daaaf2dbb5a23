"""Helpers shared by the minimal stage computes (fixed random projections, ref conversion).

The compute of a stage is what later issues replace; it sees only a `StageContext`
(runtime/stage.py) and never DDS or process management.
"""
from __future__ import annotations

import hashlib

import numpy as np


def fixed_projection(n_in: int, n_out: int, seed: int) -> np.ndarray:
    """A deterministic [n_in, n_out] float32 matrix, scaled so outputs keep unit variance."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)


def request_key(request_id: str) -> int:
    """A 63-bit number standing for a request id inside fixed-size token records."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little") >> 1


def slot_ref(shm_ref):
    """control ShmRef -> shm SlotRef."""
    from shm.pool import SlotRef

    return SlotRef(shm_ref.channel, int(shm_ref.slot), int(shm_ref.generation))


def shm_ref(slot_ref, nbytes: int = 0):
    """shm SlotRef -> control ShmRef."""
    from control.messages import ShmRef

    return ShmRef(channel=slot_ref.channel, slot=int(slot_ref.slot),
                  generation=int(slot_ref.generation), nbytes=int(nbytes))
