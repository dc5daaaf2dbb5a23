"""Record types of the shm rings, by the name a launch spec uses (`record = "token"`).

A ring's record dtype is a contract between its producer and consumers (decision writes token
records, the gateway reads them), so it lives here, in the shared runtime, not in either stage.
"""
from __future__ import annotations

import struct

import numpy as np

# Most alternatives a token record carries (OpenAI's top_logprobs limit is 20).
MAX_TOP_LOGPROBS = 20

# One sampled token of one request, or the end of a request that carries no token
# (cancelled, error: token_id -1). Fixed size so the ring needs no framing.
TOKEN_RECORD = np.dtype([
    ("request_key", "<u8"),   # runtime.compute.request_key(request_id)
    ("t_mono_ns", "<i8"),     # when the token was sampled (CLOCK_MONOTONIC)
    ("index", "<u4"),         # position in the generated sequence, from 0
    ("token_id", "<i4"),      # -1: no token in this record (an end without a token)
    ("flags", "<u4"),         # FLAG_* below
    ("finish", "<u2"),        # FINISH_* below; FINISH_NONE unless FLAG_LAST
    ("n_top", "<u2"),         # valid entries of top_ids / top_logprobs
    ("logprob", "<f4"),       # log-probability of token_id (NaN when not asked)
    ("cached_tokens", "<u4"), # prompt tokens served from the prefix cache (on the last record)
    ("top_ids", "<i4", (MAX_TOP_LOGPROBS,)),
    ("top_logprobs", "<f4", (MAX_TOP_LOGPROBS,)),
])
# The scalar fields of a TOKEN_RECORD (request_key .. cached_tokens), packed with struct: the
# decision stage writes a record without logprobs this way (shm.RingWriter.write_packed; the
# top_* arrays are zeros then).
TOKEN_HEAD = struct.Struct("<QqIiIHHfI")
assert TOKEN_HEAD.size == TOKEN_RECORD.fields["top_ids"][1] and all(
    np.frombuffer(TOKEN_HEAD.pack(*range(1, 10)).ljust(TOKEN_RECORD.itemsize, b"\0"),
                  TOKEN_RECORD)[0][k] == v for k, v in zip(TOKEN_RECORD.names, range(1, 10))), \
    "TOKEN_HEAD must lay out TOKEN_RECORD's leading fields"
FLAG_LAST = 1       # the request's final record
FLAG_ERROR = 2      # generation failed; token_id is meaningless
FLAG_LOGPROBS = 4   # logprob / top_* are filled

# Why a request ended, as the engine says (finish field). Names match the OpenAI API and
# execution.pipeline_client.FINISH_REASONS.
FINISH_NONE, FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED, FINISH_ERROR = 0, 1, 2, 3, 4
FINISH_NAMES = {FINISH_STOP: "stop", FINISH_LENGTH: "length", FINISH_CANCELLED: "cancelled",
                FINISH_ERROR: "error"}
FINISH_CODES = {v: k for k, v in FINISH_NAMES.items()}

# The decision engine's load, written a few times a second into a small ring; the gateway
# keeps the newest for /metrics (data plane: no DDS topic needed, `autoglm topic echo` shows it).
ENGINE_STATS_RECORD = np.dtype([
    ("t_mono_ns", "<i8"),
    ("running", "<u4"),            # requests holding KV blocks (prefill or decode)
    ("waiting", "<u4"),            # queued for admission
    ("waiting_modalities", "<u4"), # admitted, waiting for embeddings from perception
    ("total_blocks", "<u4"),
    ("free_blocks", "<u4"),
    ("kv_usage", "<f4"),           # 0..1 of the KV cache in use
    ("prefix_queries", "<u8"),     # prompt tokens looked up in the prefix cache (cumulative)
    ("prefix_hits", "<u8"),        # of which served from it (cumulative)
    ("prefill_tokens", "<u8"),
    ("decode_tokens", "<u8"),
    ("steps", "<u8"),
    ("preemptions", "<u8"),
    ("finished", "<u8"),           # requests finished since the stage started
])

RECORD_TYPES: dict[str, np.dtype] = {"token": TOKEN_RECORD, "engine_stats": ENGINE_STATS_RECORD}


def record_dtype(name: str) -> np.dtype:
    try:
        return RECORD_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown ring record type {name!r} (known: {', '.join(RECORD_TYPES)})") from None
