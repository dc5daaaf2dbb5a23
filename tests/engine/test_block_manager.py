"""Block allocation, reference counts and the prefix-cache map."""
from __future__ import annotations

import pytest
import torch

from decision.engine import FinishReason, SamplingParams
from decision.engine.block_manager import SCRATCH_BLOCK, BlockManager, OutOfBlocks, block_key

from .conftest import make_engine, run_to_end


def test_scratch_block_is_never_handed_out_and_exhaustion_is_an_error():
    bm = BlockManager(num_blocks=4, block_size=2)
    got = [bm.allocate() for _ in range(3)]
    assert SCRATCH_BLOCK not in got and sorted(got) == [1, 2, 3]
    with pytest.raises(OutOfBlocks):
        bm.allocate()
    bm.free(got)
    assert bm.num_available() == 3


def test_cached_blocks_are_shared_then_evicted_least_recent_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    a, b = bm.allocate(), bm.allocate()
    ka, kb = block_key(None, [1, 2]), block_key(block_key(None, [1, 2]), [3, 4])
    bm.register(a, ka)
    bm.register(b, kb)
    bm.free([a, b])
    assert bm.num_available() == 3            # cached but evictable blocks count as available
    assert bm.lookup([ka, kb]) == [a, b]      # hit: taken again, not evictable now
    bm.free([a, b])                           # tail released first: b is evicted before a
    c = bm.allocate()                         # the free block first
    d = bm.allocate()
    assert {c, d} == {3, b}
    assert bm.count_hits([ka, kb]) == 1


def test_key_depends_on_the_whole_prefix_and_extras():
    k1 = block_key(None, [1, 2])
    assert block_key(k1, [3, 4]) != block_key(block_key(None, [9, 2]), [3, 4])
    assert block_key(None, [1, 2], ("img", "h1")) != block_key(None, [1, 2], ("img", "h2"))


def test_cache_salt_separates_inputs_embeds_requests(decoder):
    engine = make_engine(decoder)
    prompt = list(range(30, 50))
    emb = torch.randn(len(prompt), 128)
    engine.add_request("a", prompt, SamplingParams(max_tokens=2), inputs_embeds=emb, cache_salt="x")
    run_to_end(engine)
    before = engine.stats.prefill_tokens_computed
    engine.add_request("b", prompt, SamplingParams(max_tokens=2), inputs_embeds=emb, cache_salt="y")
    out, reasons = run_to_end(engine)
    assert engine.stats.prefill_tokens_computed - before == len(prompt)   # no sharing
    assert reasons["b"] is FinishReason.LENGTH and len(out["b"]) == 2
