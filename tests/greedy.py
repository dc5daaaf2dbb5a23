"""Whether generated ids are greedy choices, against the in-process model (modelcore.api) in
fp32 on the CPU, scored teacher-forced on the ids themselves (continuation_logits): a reply
that took another near-tied token once goes on from there, and is still checked token by token.

bf16 rounds the embedded model's random logits, whose top two lie a few hundredths apart, so
bf16 stages pick other near-tied tokens: on the CPU in bf16, 4 of the 6 greedy replies of 16
tokens in tests/model/test_bf16_greedy.py differ from fp32, their choices at most 0.0022 below
the best logit. BF16_TIE leaves ten times that for CUDA's other kernels, and still admits few
tokens: at most 3 of the 2,112 at any position of the reply that test checks it on (1.4 on
average), so a token chosen by anything but a near-tie fails.
"""
from __future__ import annotations

import functools

BF16_TIE = 0.02


@functools.lru_cache(maxsize=1)
def reference_model():
    """The in-process model, fp32 on the CPU, with the embedded default's weights."""
    from modelcore.api import AutoGLMModel, MultiModalConfig
    return AutoGLMModel.from_pretrained(None, MultiModalConfig(audio_encoder=None))


def shortfalls(messages, images, ids: list[int]):
    """Per id: how far below the best logit of its position the reference scores it (0 for
    the reference's own greedy choice)."""
    import torch

    logits = reference_model().continuation_logits(messages, images, ids)
    return logits.max(-1).values - logits[torch.arange(len(ids)), torch.tensor(ids)]
