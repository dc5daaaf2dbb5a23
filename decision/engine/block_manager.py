"""Allocation of fixed-size KV blocks, with prefix caching of full blocks.

A block is identified by an index into the paged cache. Block 0 is reserved as scratch: the
padded rows of a CUDA-graph batch write their K/V there, so it is never handed to a request.

Prefix caching: a full block's key is a hash of (previous block's key, its token ids, and
the content hash plus offset of every modality embedding row inside it). Equal keys mean
equal K/V, so a later request with the same prefix (an agent's system prompt and history)
reuses the blocks instead of recomputing them. A cached block that no request holds stays
in the cache until the allocator needs it (least recently freed first).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

SCRATCH_BLOCK = 0


class OutOfBlocks(RuntimeError):
    """No free or evictable block is left."""


def block_key(prev_key: bytes | None, token_ids, extra: tuple = ()) -> bytes:
    """Chained key of one full block; `extra` carries modality content hashes and offsets."""
    h = hashlib.blake2b(digest_size=16)
    h.update(prev_key or b"root")
    h.update(repr((tuple(int(t) for t in token_ids), extra)).encode())
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True):
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks (got {num_blocks})")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        self._free: list[int] = list(range(num_blocks - 1, SCRATCH_BLOCK, -1))
        self._refs = [0] * num_blocks
        self._key_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        # Cached blocks nobody holds, oldest first: evicted when the free list is empty.
        self._evictable: OrderedDict[int, None] = OrderedDict()

    @property
    def usable_blocks(self) -> int:
        return self.num_blocks - 1

    def num_available(self) -> int:
        return len(self._free) + len(self._evictable)

    def allocate(self) -> int:
        if self._free:
            block = self._free.pop()
        elif self._evictable:
            block, _ = self._evictable.popitem(last=False)
            del self._block_of[self._key_of.pop(block)]
        else:
            raise OutOfBlocks("no free KV block")
        self._refs[block] = 1
        return block

    def free(self, blocks: list[int]) -> None:
        # Release in reverse so a sequence's tail blocks are evicted before its head,
        # which keeps shared prefixes alive longest.
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] < 0:
                raise AssertionError(f"block {block} freed twice")
            if self._refs[block] == 0:
                if block in self._key_of:
                    self._evictable[block] = None
                else:
                    self._free.append(block)

    def lookup(self, keys: list[bytes]) -> list[int]:
        """Blocks holding the longest cached run of `keys` from the start, now held by the caller."""
        if not self.enable_prefix_cache:
            return []
        hits = []
        for key in keys:
            block = self._block_of.get(key)
            if block is None:
                break
            if self._refs[block] == 0:
                self._evictable.pop(block, None)
            self._refs[block] += 1
            hits.append(block)
        return hits

    def count_hits(self, keys: list[bytes]) -> int:
        """How many leading keys are cached, without taking the blocks."""
        if not self.enable_prefix_cache:
            return 0
        n = 0
        for key in keys:
            if key not in self._block_of:
                break
            n += 1
        return n

    def register(self, block: int, key: bytes) -> None:
        """Record that `block` now holds the full block named `key`."""
        if not self.enable_prefix_cache or block in self._key_of:
            return
        if key in self._block_of:
            # Another sequence computed the same block first; keep that one as the cached copy.
            return
        self._key_of[block] = key
        self._block_of[key] = block

    def reset_prefix_cache(self) -> None:
        for block in list(self._evictable):
            self._free.append(block)
        self._evictable.clear()
        self._key_of.clear()
        self._block_of.clear()
