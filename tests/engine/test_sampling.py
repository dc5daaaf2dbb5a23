"""The sampler's semantics against transformers' logits processors and by definition."""
from __future__ import annotations

import pytest
import torch

from decision.engine.sampling import SamplerState, SamplingParams, sample

V = 50


def state(params, prompt=(1, 2, 3)):
    return SamplerState.create(params, list(prompt), V, torch.device("cpu"))


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, V, generator=g) * 3
    prompt = [4, 9, 9, 17]
    s = state(SamplingParams(repetition_penalty=1.7, logprobs=0), prompt)
    from decision.engine.sampling import _apply_penalties
    ours = _apply_penalties(logits.clone(), [s])
    ref = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([prompt]), logits.clone())
    torch.testing.assert_close(ours, ref)


def test_frequency_and_presence_penalties_follow_openai():
    from decision.engine.sampling import _apply_penalties
    logits = torch.zeros(1, V)
    s = state(SamplingParams(frequency_penalty=0.5, presence_penalty=0.25))
    # Generated tokens 7, 7, 3 (prompt tokens do not count for these two penalties).
    for tok in (7, 7, 3):
        sample(torch.full((1, V), -1e4).index_fill_(1, torch.tensor([tok]), 0.0), [s])
    out = _apply_penalties(logits.clone(), [s])[0]
    assert out[7].item() == pytest.approx(-(0.5 * 2 + 0.25))
    assert out[3].item() == pytest.approx(-(0.5 + 0.25))
    assert out[1].item() == 0.0


def test_penalties_change_the_greedy_choice():
    logits = torch.zeros(1, V)
    logits[0, 5], logits[0, 6] = 2.0, 1.9
    s = state(SamplingParams(frequency_penalty=1.0))
    assert sample(logits, [s]).token_ids == [5]
    assert sample(logits, [s]).token_ids == [6]   # 5 now costs 1.0


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.linspace(0, 5, V)[None]        # token V-1 most likely
    s_k = state(SamplingParams(temperature=1.5, top_k=3, seed=1))
    s_p = state(SamplingParams(temperature=1.0, top_p=0.5, seed=2))
    probs = torch.softmax(logits[0], -1).sort(descending=True)
    nucleus = 1 + int((probs.values.cumsum(0) - probs.values < 0.5).sum()) - 1
    allowed_p = set(probs.indices[:nucleus].tolist())
    seen_k, seen_p = set(), set()
    for _ in range(200):
        seen_k.update(sample(logits, [s_k]).token_ids)
        seen_p.update(sample(logits, [s_p]).token_ids)
    assert seen_k == {V - 1, V - 2, V - 3}
    assert seen_p <= allowed_p and len(seen_p) > 1


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1] + [1e-12] * (V - 3)]))
    s = state(SamplingParams(temperature=1.0, seed=3))
    draws = [sample(logits, [s]).token_ids[0] for _ in range(2000)]
    freq = [draws.count(i) / len(draws) for i in range(3)]
    assert freq == pytest.approx([0.7, 0.2, 0.1], abs=0.04)


def test_logprobs_are_the_models_log_softmax():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, V, generator=g)
    states = [state(SamplingParams(logprobs=3)), state(SamplingParams())]
    res = sample(logits, states)
    ref = torch.log_softmax(logits, -1)
    assert res.token_ids == logits.argmax(-1).tolist()
    assert res.logprobs[0] == pytest.approx(ref[0].max().item(), abs=1e-6)
    top = ref[0].topk(3)
    assert [t for t, _ in res.top_logprobs[0]] == top.indices.tolist()
    assert res.logprobs[1] is None and res.top_logprobs[1] == []


def test_bad_params_are_named():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_logit_bias_is_added_before_anything_else():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(3, V, generator=g)
    top = logits.argmax(-1).tolist()
    states = [state(SamplingParams(logit_bias=((7, 100.0),))),             # forced, greedy
              state(SamplingParams(logit_bias=((top[1], -100.0),), logprobs=0)),   # banned
              state(SamplingParams(temperature=1.0, seed=1, logit_bias=((9, 100.0),)))]
    res = sample(logits, states)
    assert res.token_ids[0] == 7 and res.token_ids[2] == 9
    assert res.token_ids[1] == logits[1].scatter(0, torch.tensor([top[1]]),
                                                 float("-inf")).argmax().item()
    # Its logprob is the model's, before the bias (as vLLM reports it).
    ref = torch.log_softmax(logits[1], -1)[res.token_ids[1]].item()
    assert res.logprobs[1] == pytest.approx(ref, abs=1e-6)
    # The bias is added as such: the runner-up wins with a bias just over its gap to the
    # best logit, and not with one just under.
    best, second = logits[0].topk(2).indices.tolist()
    gap = (logits[0, best] - logits[0, second]).item()
    for margin, winner in ((0.01, second), (-0.01, best)):
        bias = ((second, gap + margin),)
        assert sample(logits[:1], [state(SamplingParams(logit_bias=bias))]).token_ids == [winner]


def test_logit_bias_is_checked():
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias=((3, 101.0),))
    with pytest.raises(ValueError, match="past the vocabulary"):
        state(SamplingParams(logit_bias=((V, 1.0),)))
