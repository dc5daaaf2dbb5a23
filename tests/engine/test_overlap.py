"""Overlapped decode (EngineConfig.overlap_decode): the next decode step is queued before the
previous one's tokens are read. It must change when records come out, never what they say."""
from __future__ import annotations

from decision.engine import FinishReason, SamplingParams

from .conftest import hf_greedy, make_engine, run_to_end
from .test_engine import prompts


def _records(engine, max_steps=2000):
    """Every record's (request, token, logprob, top logprobs, finished, reason), in order per request."""
    seen: dict[str, list] = {}
    for _ in range(max_steps):
        for r in engine.step():
            seen.setdefault(r.request_id, []).append(
                (r.token_id, r.logprob, r.top_logprobs, r.finished, r.finish_reason))
        if not engine.has_unfinished():
            return seen
    raise AssertionError("engine did not finish")


def _mixed_workload(engine, stop_token):
    ps = prompts(5, 23, 9, 14, 31, seed=21)
    engine.add_request("greedy", ps[0], SamplingParams(max_tokens=17))
    engine.add_request("stops", ps[1], SamplingParams(max_tokens=40, stop_token_ids=[stop_token]))
    engine.add_request("seeded", ps[2], SamplingParams(max_tokens=12, temperature=0.9, top_p=0.8,
                                                        top_k=40, seed=5))
    engine.add_request("penalised", ps[3], SamplingParams(max_tokens=9, repetition_penalty=1.3,
                                                           frequency_penalty=0.5, logprobs=3))
    engine.add_request("one", ps[4], SamplingParams(max_tokens=1, logprobs=0))


def test_overlap_gives_the_same_records_as_stepping_in_lockstep(checkpoint, decoder):
    _, hf = checkpoint
    stop_token = hf_greedy(hf, prompts(5, 23, seed=21)[1], 6)[5]   # "stops" ends at its 6th token
    results = {}
    for overlap in (False, True):
        engine = make_engine(decoder, overlap_decode=overlap)
        free = engine.num_free_blocks()
        _mixed_workload(engine, stop_token)
        results[overlap] = _records(engine)
        assert engine.num_free_blocks() == free, "blocks leaked"
        if overlap:
            assert engine.stats.chained_steps > 5
        else:
            assert engine.stats.chained_steps == 0
    # Tokens and ends exactly; logprobs to float noise (a discarded row changes the batch).
    lockstep = {rid: [(t, done, why) for t, _, _, done, why in recs] for rid, recs in results[False].items()}
    assert {rid: [(t, done, why) for t, _, _, done, why in recs]
            for rid, recs in results[True].items()} == lockstep
    for rid, recs in results[True].items():
        for (_, lp, top, _, _), (_, ref_lp, ref_top, _, _) in zip(recs, results[False][rid]):
            assert (lp is None) == (ref_lp is None) and (lp is None or abs(lp - ref_lp) < 1e-5)
            assert [t for t, _ in top] == [t for t, _ in ref_top]
    stops = results[True]["stops"]
    assert stops[-1][3:] == (True, FinishReason.STOP) and len(stops) == 6, \
        "the row computed after the stop token must be discarded"


def test_arrivals_cancels_and_preemption_while_chained(checkpoint, decoder):
    _, hf = checkpoint
    ps = prompts(10, 14, 6, 8, seed=11)
    # 13 usable blocks of 4 tokens: the four requests cannot all hold their blocks at once.
    engine = make_engine(decoder, num_blocks=14, enable_prefix_cache=False, overlap_decode=True)
    free = engine.num_free_blocks()
    for i, p in enumerate(ps[:3]):
        engine.add_request(f"p{i}", p, SamplingParams(max_tokens=12))
    engine.add_request("gone", ps[3], SamplingParams(max_tokens=30))
    out: dict[str, list[int]] = {}
    reasons = {}
    for n in range(2000):
        if n == 4:
            engine.add_request("late", ps[0], SamplingParams(max_tokens=7))
        if n == 6:
            engine.cancel("gone")
        for r in engine.step():
            if r.token_id >= 0:
                out.setdefault(r.request_id, []).append(r.token_id)
            if r.finished:
                reasons[r.request_id] = r.finish_reason
        if not engine.has_unfinished():
            break
    assert engine.stats.chained_steps > 0 and engine.stats.preemptions > 0
    assert reasons["gone"] is FinishReason.CANCELLED
    for i, p in enumerate(ps[:3]):
        assert out[f"p{i}"] == hf_greedy(hf, p, 12)
    assert out["late"] == hf_greedy(hf, ps[0], 7)
    assert engine.num_free_blocks() == free


def test_run_to_end_helper_sees_every_token_with_overlap(decoder):
    engine = make_engine(decoder, overlap_decode=True)
    engine.add_request("a", prompts(7)[0], SamplingParams(max_tokens=25))
    out, reasons = run_to_end(engine)
    assert len(out["a"]) == 25 and reasons["a"] is FinishReason.LENGTH


def test_blocks_of_generated_tokens_reach_the_prefix_cache_with_overlap(decoder):
    """A follow-up turn whose prompt repeats a chained request's output hits the blocks it
    filled, exactly as in lockstep (block keys are made only from tokens already read)."""
    p = prompts(6, seed=31)[0]
    hits, outs = {}, {}
    for overlap in (False, True):
        engine = make_engine(decoder, overlap_decode=overlap)
        engine.add_request("turn1", p, SamplingParams(max_tokens=23))
        first, _ = run_to_end(engine)
        before = engine.stats.prefix_cache_hit_tokens
        engine.add_request("turn2", p + first["turn1"], SamplingParams(max_tokens=5))
        outs[overlap], _ = run_to_end(engine)
        hits[overlap] = engine.stats.prefix_cache_hit_tokens - before
    assert hits[True] == hits[False] == 28      # a 29-token prompt: its first 7 blocks of 4
    assert outs[True] == outs[False]
