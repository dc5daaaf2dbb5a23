"""LRU cache of whole responses for repeated deterministic requests (off by default).

Only requests whose output is a function of the request alone are cached: greedy
(temperature 0) or seeded sampling. The key is a hash of everything that shapes the output:
the prompt token ids (which already include the rendered template, the thinking switch and
image token counts), a digest of the media bytes (two screenshots of the same size give the
same token ids but different pixels), the sampling parameters and the output options (stop
strings, return_reasoning, reasoning budget). Only requests that finished normally ("stop" or
"length") are stored; a cancelled or failed one never is.

Caveat, documented for operators: with a seed the engine's batch-invariance decides whether a
repeat really gives the same tokens; a cached answer is what the first run gave.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np


@dataclass(frozen=True)
class CachedResponse:
    content: str
    reasoning: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: dict[str, Any] | None = None


class ResponseCache:
    def __init__(self, max_entries: int):
        if max_entries < 1:
            raise ValueError(f"response cache size must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._items: OrderedDict[str, CachedResponse] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> CachedResponse | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: str, value: CachedResponse) -> None:
        if value.finish_reason not in ("stop", "length"):
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)


def cache_key(prompt_ids: Iterable[int], media: Iterable[np.ndarray], sampling: Any,
              options: Any) -> str:
    """A digest of everything the output depends on; `sampling`/`options` are dataclasses."""
    h = hashlib.blake2b(digest_size=20)
    h.update(np.asarray(list(prompt_ids), dtype=np.int64).tobytes())
    for arr in media:
        a = np.ascontiguousarray(arr)
        h.update(f"|{a.dtype}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    h.update(json.dumps(asdict(sampling), sort_keys=True, default=str).encode())
    h.update(json.dumps(asdict(options), sort_keys=True, default=sorted).encode())
    return h.hexdigest()
