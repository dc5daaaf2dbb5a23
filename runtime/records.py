"""Record types of the shm rings, by the name a launch spec uses (`record = "token"`).

A ring's record dtype is a contract between its producer and consumers (decision writes token
records, the gateway reads them), so it lives here, in the shared runtime, not in either stage.
"""
from __future__ import annotations

import numpy as np

# One sampled token of one request.
TOKEN_RECORD = np.dtype([
    ("request_key", "<u8"),   # runtime.compute.request_key(request_id)
    ("t_mono_ns", "<i8"),     # when the token was sampled (CLOCK_MONOTONIC)
    ("index", "<u4"),         # position in the generated sequence, from 0
    ("token_id", "<i4"),
    ("flags", "<u4"),         # FLAG_* below
    ("_pad", "<u4"),
])
FLAG_LAST = 1       # the request's final token
FLAG_ERROR = 2      # generation failed; token_id is meaningless

RECORD_TYPES: dict[str, np.dtype] = {"token": TOKEN_RECORD}


def record_dtype(name: str) -> np.dtype:
    try:
        return RECORD_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown ring record type {name!r} (known: {', '.join(RECORD_TYPES)})") from None
