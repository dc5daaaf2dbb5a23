"""The attention-over-cache interface the decoder calls, and a simple contiguous cache.

The decoder hands the fused q/k/v projection of its new tokens and the step's rotary tables
to `kv.attend_qkv(layer, qkv, cos, sin, heads)`; splitting and rotating (`attend_qkv`),
storing keys and values and deciding which earlier tokens each query sees (`attend`) is the
cache's business. That keeps the decoder usable unchanged by a paged, continuously batched
engine, which passes a different cache object and fuses those steps on the GPU.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch.nn import functional as F

from .rope import split_rotate


class KVCache(Protocol):
    def attend_qkv(self, layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   heads: int) -> torch.Tensor:
        """qkv [N, (heads + 2 kv_heads) * d] for the N new tokens, rotary tables [N, rotary_dim]
        -> attention output [N, heads, d]."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [N, heads, d], k/v [N, kv_heads, d] for the N new tokens (rotated)
        -> out [N, heads, d]."""

    def commit(self, n_tokens: int) -> None:
        """Called once after all layers ran for N new tokens: they now belong to the cache."""


class ContiguousKVCache:
    """Keys/values for `batch` sequences of equal length in preallocated [B, kv, S, d] tensors.

    The new tokens of a forward pass are laid out batch-major (N = batch * T). Attention is
    causal within the new tokens and sees every cached token; the length is host state
    advanced by `commit`, so nothing in `attend` waits on the device.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, max_len: int,
                 batch: int = 1, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        shape = (batch, num_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.batch, self.max_len, self.length = batch, max_len, 0

    def attend_qkv(self, layer, qkv, cos, sin, heads):
        _, kv_heads, _, head_dim = self.k[layer].shape
        return self.attend(layer, *split_rotate(qkv, cos, sin, heads, kv_heads, head_dim))

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b = self.batch
        t = q.shape[0] // b
        start, end = self.length, self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens exceed max_len {self.max_len}")
        # [N, h, d] -> [B, h, T, d]
        q = q.view(b, t, *q.shape[1:]).transpose(1, 2)
        self.k[layer][:, :, start:end] = k.view(b, t, *k.shape[1:]).transpose(1, 2)
        self.v[layer][:, :, start:end] = v.view(b, t, *v.shape[1:]).transpose(1, 2)
        keys, values = self.k[layer][:, :, :end], self.v[layer][:, :, :end]
        groups = q.shape[1] // keys.shape[1]
        if groups > 1:  # grouped-query attention: query head i reads kv head i // groups
            keys = keys.repeat_interleave(groups, dim=1)
            values = values.repeat_interleave(groups, dim=1)
        if t == 1:
            out = F.scaled_dot_product_attention(q, keys, values)
        elif start == 0:
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        else:  # chunk appended to a non-empty cache: query i sees keys <= start + i
            mask = torch.ones(t, end, dtype=torch.bool, device=q.device).tril(diagonal=start)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        heads, d = out.shape[1], out.shape[3]
        return out.transpose(1, 2).reshape(b * t, heads, d)

    def commit(self, n_tokens: int) -> None:
        self.length += n_tokens // self.batch
