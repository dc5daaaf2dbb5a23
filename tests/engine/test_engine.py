"""The engine against transformers' own generate, on a tiny random GLM-4.1V checkpoint."""
from __future__ import annotations

import pytest
import torch

from decision.engine import (EngineError, FinishReason, ModalityInput, RequestStatus,
                             SamplingParams)
from decision.fusion import mrope_positions

from .conftest import IMAGE_TOKEN, hf_greedy, make_engine, run_to_end


def prompts(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 500, (n,), generator=g).tolist() for n in lengths]


def test_greedy_matches_transformers_alone_and_in_a_batch(checkpoint, decoder):
    _, hf = checkpoint
    target, *others = prompts(11, 3, 29, 7, 18)
    ref = hf_greedy(hf, target, 10)

    alone = make_engine(decoder)
    alone.add_request("t", target, SamplingParams(max_tokens=10))
    out, reasons = run_to_end(alone)
    assert out["t"] == ref and reasons["t"] is FinishReason.LENGTH

    # Small token budget: prompts are prefilled in chunks, mixed with running decodes, and
    # requests join while others decode.
    batch = make_engine(decoder, max_num_batched_tokens=8)
    batch.add_request("o0", others[0], SamplingParams(max_tokens=6))
    early = [r.token_id for r in batch.step()]
    batch.add_request("t", target, SamplingParams(max_tokens=10))
    for i, p in enumerate(others[1:], 1):
        batch.add_request(f"o{i}", p, SamplingParams(max_tokens=4 + 3 * i))
    out, _ = run_to_end(batch)
    out["o0"] = early + out["o0"]
    assert out["t"] == ref
    for i, p in enumerate(others):
        assert out[f"o{i}"] == hf_greedy(hf, p, len(out[f"o{i}"])), f"o{i}"


def test_image_embeddings_at_placeholders_match_transformers(checkpoint, decoder):
    _, hf = checkpoint
    grid = [1, 4, 4]                                   # 2x2 merged tokens
    g = torch.Generator().manual_seed(5)
    pixels = torch.randn(16, 3 * 2 * 14 * 14, generator=g)
    n_img = 4
    prompt = [7, 8, 502] + [IMAGE_TOKEN] * n_img + [503, 9, 10, 11]
    with torch.no_grad():
        feats = hf.model.get_image_features(pixel_values=pixels,
                                            image_grid_thw=torch.tensor([grid]))
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
    # transformers needs the token types to give image tokens their 3-D positions.
    types = (torch.tensor([prompt]) == IMAGE_TOKEN).int()
    ref = hf_greedy(hf, prompt, 8, pixel_values=pixels, image_grid_thw=torch.tensor([grid]),
                    mm_token_type_ids=types)

    pos = mrope_positions(prompt, IMAGE_TOKEN, [grid], 2)
    engine = make_engine(decoder)
    engine.add_request("img", prompt, SamplingParams(max_tokens=8),
                       modalities=[ModalityInput("image0", list(range(3, 3 + n_img)))],
                       mrope_positions=pos.ids)
    engine.add_request("txt", prompts(6)[0], SamplingParams(max_tokens=3))
    # The text request runs while the image request waits for its embeddings, and only them.
    for _ in range(4):
        assert all(r.request_id == "txt" for r in engine.step())
    assert engine.status("img") is RequestStatus.WAITING_FOR_MODALITIES
    assert engine.has_unfinished() and not engine.has_runnable()
    engine.provide_modality("img", "image0", feats)
    out, _ = run_to_end(engine)
    assert out["img"] == ref


def test_freed_blocks_do_not_leak_into_the_next_request(checkpoint, decoder):
    first, second = prompts(40, 13, seed=3)
    fresh = make_engine(decoder, num_blocks=20, enable_prefix_cache=False)
    fresh.add_request("b", second, SamplingParams(max_tokens=20))
    expected, _ = run_to_end(fresh)

    engine = make_engine(decoder, num_blocks=20, enable_prefix_cache=False)
    engine.add_request("a", first, SamplingParams(max_tokens=30))   # 70 tokens: 18 of 19 blocks
    run_to_end(engine)
    assert engine.num_free_blocks() == 19
    engine.add_request("b", second, SamplingParams(max_tokens=20))
    out, _ = run_to_end(engine)
    assert out["b"] == expected["b"]


def test_prefix_cache_hit_gives_the_same_tokens_and_skips_compute(checkpoint, decoder):
    _, hf = checkpoint
    system, q1, q2 = prompts(37, 5, 6, seed=4)
    engine = make_engine(decoder)
    engine.add_request("first", system + q1, SamplingParams(max_tokens=5))
    run_to_end(engine)
    computed = engine.stats.prefill_tokens_computed
    engine.add_request("second", system + q2, SamplingParams(max_tokens=5))
    out, _ = run_to_end(engine)
    # 37 shared tokens = 9 full blocks of 4 reused; only the rest is computed.
    assert engine.stats.prefill_tokens_computed - computed == len(system + q2) - 36
    assert engine.stats.prefix_cache_hit_tokens == 36
    assert out["second"] == hf_greedy(hf, system + q2, 5)

    # The same prompt again: everything but the last block comes from the cache.
    engine.add_request("again", system + q2, SamplingParams(max_tokens=5))
    out2, _ = run_to_end(engine)
    assert out2["again"] == out["second"]


def test_one_row_past_a_cached_prefix_in_a_step_with_other_prompts(checkpoint, decoder):
    """A prompt whose cached blocks leave one row to compute is attended as a decode; admitted
    in the same step after another prompt, it must still be laid out with the decodes (it was
    not: its row went unattended and the other prompt's first row was read as a decode)."""
    _, hf = checkpoint
    target, other = prompts(4 * 5 + 1, 9, seed=8)
    engine = make_engine(decoder)
    engine.add_request("fill", target, SamplingParams(max_tokens=1))
    run_to_end(engine)                                 # its 5 full blocks are now cached
    engine.add_request("other", other, SamplingParams(max_tokens=6))
    engine.add_request("t", target, SamplingParams(max_tokens=6))
    computed = engine.stats.prefill_tokens_computed
    out, _ = run_to_end(engine)
    assert engine.stats.prefill_tokens_computed - computed == len(other) + 1
    assert out["t"] == hf_greedy(hf, target, 6)
    assert out["other"] == hf_greedy(hf, other, 6)


def test_one_image_row_past_a_cached_prefix_keeps_its_embedding(checkpoint, decoder):
    """The one row left to compute can be an image row: it takes the image's embedding, not
    the placeholder token's."""
    prompt = [7, 8, 9, 10, 502] + [IMAGE_TOKEN] * 4            # 9 rows: 2 blocks + 1
    emb = torch.randn(4, 128, generator=torch.Generator().manual_seed(11))

    def run(engine, rid):
        engine.add_request(rid, prompt, SamplingParams(max_tokens=5),
                           modalities=[ModalityInput("im", [5, 6, 7, 8])])
        engine.provide_modality(rid, "im", emb)
        return run_to_end(engine)[0][rid]

    engine = make_engine(decoder)
    whole = run(engine, "whole")
    before = engine.stats.prefill_tokens_computed
    assert run(engine, "cached") == whole
    assert engine.stats.prefill_tokens_computed - before == 1


def test_text_layout_is_explicit_positions_0_to_p(checkpoint, decoder):
    """A text request keeps no position tensor (the layout is implied); its blocks are still
    those of a request giving positions 0..P-1 explicitly (a screenshot request's
    system-prompt blocks serve a text request), with the same tokens."""
    _, hf = checkpoint
    system, q = prompts(37, 6, seed=5)
    engine = make_engine(decoder)
    explicit = torch.arange(len(system + q)).expand(3, -1)
    engine.add_request("explicit", system + q, SamplingParams(max_tokens=5),
                       mrope_positions=explicit)
    out, _ = run_to_end(engine)
    engine.add_request("text", system + q[:-1] + [q[-1] + 1], SamplingParams(max_tokens=5))
    assert engine.requests["text"].positions is None
    assert torch.equal(engine.requests["text"].position_ids(3, 45), torch.arange(3, 45).expand(3, -1))
    computed = engine.stats.prefill_tokens_computed
    out2, _ = run_to_end(engine)
    assert engine.stats.prefill_tokens_computed - computed == len(system + q) - 40
    assert out["explicit"] == hf_greedy(hf, system + q, 5)
    assert out2["text"] == hf_greedy(hf, system + q[:-1] + [q[-1] + 1], 5)


def test_image_content_is_part_of_the_prefix_key(checkpoint, decoder):
    prompt = [7, 502] + [IMAGE_TOKEN] * 4 + [503] + list(range(20, 33))
    g = torch.Generator().manual_seed(9)
    img_a, img_b = torch.randn(4, 128, generator=g), torch.randn(4, 128, generator=g)

    def run(engine, rid, emb, hash_=None):
        engine.add_request(rid, prompt, SamplingParams(max_tokens=4),
                           modalities=[ModalityInput("im", [2, 3, 4, 5], hash_)])
        engine.provide_modality(rid, "im", emb)
        return run_to_end(engine)[0][rid]

    engine = make_engine(decoder)
    a = run(engine, "a", img_a)
    before = engine.stats.prefill_tokens_computed
    b = run(engine, "b", img_b)                      # other image: no block may be reused
    assert engine.stats.prefill_tokens_computed - before == len(prompt)
    assert b == run(make_engine(decoder), "b", img_b)
    before = engine.stats.prefill_tokens_computed
    assert run(engine, "a2", img_a) == a             # same image: reused
    assert engine.stats.prefill_tokens_computed - before < len(prompt)


def test_cancel_takes_effect_at_the_next_step_and_frees_blocks(decoder):
    engine = make_engine(decoder)
    free = engine.num_free_blocks()
    engine.add_request("c", prompts(9)[0], SamplingParams(max_tokens=100))
    engine.add_request("d", prompts(5)[0], SamplingParams(max_tokens=6))
    for _ in range(3):
        engine.step()
    engine.cancel("c")
    records = engine.step()
    mine = [r for r in records if r.request_id == "c"]
    assert len(mine) == 1 and mine[0].finished and mine[0].finish_reason is FinishReason.CANCELLED
    assert mine[0].token_id == -1
    out, reasons = run_to_end(engine)
    assert "c" not in reasons and reasons["d"] is FinishReason.LENGTH and len(out["d"]) >= 1
    assert engine.num_free_blocks() == free


def test_max_tokens_and_stop_ids(checkpoint, decoder):
    _, hf = checkpoint
    p = prompts(10, seed=7)[0]
    ref = hf_greedy(hf, p, 8)
    engine = make_engine(decoder)
    engine.add_request("len", p, SamplingParams(max_tokens=3))
    engine.add_request("stop", p, SamplingParams(max_tokens=50, stop_token_ids=[ref[4]]))
    out, reasons = run_to_end(engine)
    assert out["len"] == ref[:3] and reasons["len"] is FinishReason.LENGTH
    first_stop = ref.index(ref[4])
    assert out["stop"] == ref[:first_stop + 1] and reasons["stop"] is FinishReason.STOP


def test_seed_gives_the_same_tokens_whatever_the_batch(decoder):
    p = prompts(12, seed=8)[0]
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=42)
    alone = make_engine(decoder)
    alone.add_request("s", p, params)
    out_alone, _ = run_to_end(alone)

    mixed = make_engine(decoder, max_num_batched_tokens=8)
    for i, q in enumerate(prompts(7, 20, 3, seed=9)):
        mixed.add_request(f"x{i}", q, SamplingParams(max_tokens=9, temperature=1.0, seed=i))
    mixed.add_request("s", p, params)
    out_mixed, _ = run_to_end(mixed)
    assert out_mixed["s"] == out_alone["s"]

    other = make_engine(decoder)
    other.add_request("s", p, SamplingParams(max_tokens=12, temperature=1.0, seed=43))
    assert run_to_end(other)[0]["s"] != out_alone["s"]


def test_a_request_that_can_never_fit_errors_while_others_go_on(checkpoint, decoder):
    _, hf = checkpoint
    p = prompts(9, seed=10)[0]
    engine = make_engine(decoder, num_blocks=16)         # 15 usable blocks = 60 tokens
    engine.add_request("ok", p, SamplingParams(max_tokens=6))
    engine.add_request("huge", p, SamplingParams(max_tokens=200))
    out, reasons = run_to_end(engine)
    assert reasons["huge"] is FinishReason.ERROR and out["huge"] == []
    assert reasons["ok"] is FinishReason.LENGTH and out["ok"] == hf_greedy(hf, p, 6)
    with pytest.raises(EngineError, match="outside the vocabulary"):
        engine.add_request("bad", [1, 2, 9999])


def test_error_record_names_the_problem(decoder):
    engine = make_engine(decoder, num_blocks=8)
    engine.add_request("huge", prompts(9)[0], SamplingParams(max_tokens=500))
    (rec,) = engine.step()
    assert rec.finish_reason is FinishReason.ERROR and "KV blocks" in rec.error


def test_preemption_under_memory_pressure_keeps_outputs_exact(checkpoint, decoder):
    _, hf = checkpoint
    ps = prompts(10, 14, 6, seed=11)
    engine = make_engine(decoder, num_blocks=14, enable_prefix_cache=False)  # 13 blocks: 52 tokens
    for i, p in enumerate(ps):
        engine.add_request(f"p{i}", p, SamplingParams(max_tokens=12))
    out, _ = run_to_end(engine)
    assert engine.stats.preemptions > 0
    for i, p in enumerate(ps):
        assert out[f"p{i}"] == hf_greedy(hf, p, 12)


def test_inputs_embeds_override_equals_the_token_embeddings(decoder):
    p = prompts(15, seed=12)[0]
    engine = make_engine(decoder)
    engine.add_request("ids", p, SamplingParams(max_tokens=6))
    with torch.no_grad():
        emb = decoder.embed(torch.tensor(p))
    engine.add_request("emb", p, SamplingParams(max_tokens=6), inputs_embeds=emb)
    out, _ = run_to_end(engine)
    assert out["emb"] == out["ids"]


def test_modality_input_errors_are_named(decoder):
    engine = make_engine(decoder)
    with pytest.raises(EngineError, match="outside the prompt"):
        engine.add_request("m", [1, 2, 3], modalities=[ModalityInput("im", [1, 7])])
    engine.add_request("m", [1, 2, 3, 4], modalities=[ModalityInput("im", [1, 2])])
    with pytest.raises(EngineError, match=r"expected embeddings \[2, 128\]"):
        engine.provide_modality("m", "im", torch.zeros(3, 128))
    with pytest.raises(EngineError, match="declared no modality"):
        engine.provide_modality("m", "audio", torch.zeros(2, 128))
