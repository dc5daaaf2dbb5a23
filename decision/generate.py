"""In-process generation on the decoder with a contiguous KV cache (greedy or sampling).

The serving engine (continuous batching, paged cache) replaces this; it exists for the
Python API, tests and quick checks, and shows the decode-time position rule.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .decoder import GlmDecoder
from .fusion import decode_positions


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                top_k: int = 0, generator: torch.Generator | None = None) -> int:
    """One token from logits [vocab]: argmax when temperature is 0, else top-k/top-p sampling."""
    if temperature <= 0.0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p  # smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


@torch.no_grad()
def generate_ids(decoder: GlmDecoder, embeds: torch.Tensor, positions: torch.Tensor,
                 rope_delta: int, max_new_tokens: int, eos_ids: Sequence[int] = (),
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                 seed: int | None = None) -> list[int]:
    """Prefill `embeds` [N, H] at `positions` [3, N], then decode up to max_new_tokens."""
    n = embeds.shape[0]
    kv = decoder.new_cache(n + max_new_tokens)
    gen = torch.Generator(device=embeds.device).manual_seed(seed) if seed is not None else None
    hidden = decoder(embeds, positions, kv)
    logits = decoder.logits(hidden[-1:])[0]
    out: list[int] = []
    eos = set(int(e) for e in eos_ids)
    for step in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_p, top_k, gen)
        out.append(tok)
        if tok in eos or step == max_new_tokens - 1:
            break
        ids = torch.tensor([tok], device=embeds.device)
        pos = decode_positions(kv.length, 1, rope_delta, device=embeds.device)
        logits = decoder.logits(decoder(decoder.embed(ids), pos, kv))[0]
    return out


@torch.no_grad()
def continuation_logits(decoder: GlmDecoder, embeds: torch.Tensor, positions: torch.Tensor,
                        rope_delta: int, ids: Sequence[int]) -> torch.Tensor:
    """Logits [len(ids), vocab]: row i is what the model predicts after the prompt (`embeds`
    at `positions`) and ids[:i], all rows from one teacher-forced forward. How likely a
    generated continuation was, token by token (tests: were the server's choices greedy?)."""
    if not ids:
        raise ValueError("no ids to score")
    n = embeds.shape[0]
    device = embeds.device
    kv = decoder.new_cache(n + len(ids))
    forced = decoder.embed(torch.tensor(list(ids[:-1]), device=device, dtype=torch.long))
    pos = torch.cat([positions, decode_positions(n, len(ids) - 1, rope_delta, device)], dim=1)
    hidden = decoder(torch.cat([embeds, forced]), pos, kv)
    return decoder.logits(hidden[n - 1:])
