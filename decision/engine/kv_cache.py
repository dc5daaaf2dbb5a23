"""The paged KV cache and the attention it serves.

Storage: per layer, K and V tensors [num_blocks, block_size, kv_heads, head_dim]. A sequence
owns a list of blocks (its block table); token t of the sequence lives in block
table[t // block_size] at offset t % block_size ("slot" = block * block_size + offset).

The decoder calls `attend(layer, q, k, v)` on a `StepAttention` once per layer; it writes the
step's new K/V into their slots and attends each query over its sequence's cached context.
Rows are ordered decode rows first (one query each, attended together through a gather of
the block tables), then prefill chunks (each attended alone, causal within its context).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

import autoglm_kernels as kernels
from decision.rope import split_rotate


class CacheTooSmall(ValueError):
    """The memory budget does not hold even a minimal KV cache."""


def bytes_per_block(num_layers: int, block_size: int, kv_heads: int, head_dim: int,
                    dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * kv_heads * head_dim * elem


def plan_num_blocks(*, num_layers: int, block_size: int, kv_heads: int, head_dim: int,
                    dtype: torch.dtype, device: torch.device, gpu_memory_utilization: float = 0.9,
                    kv_cache_bytes: int | None = None, num_blocks: int | None = None,
                    max_useful_blocks: int | None = None) -> int:
    """How many blocks the budget allows.

    Explicit `num_blocks` wins, then `kv_cache_bytes`; on CUDA the default budget is the free
    memory less the share (1 - utilisation) of the total kept back for activations and graphs,
    and at most `max_useful_blocks` (every sequence the engine may run at its longest): a
    small model takes what it can use, not the GPU, which other pipelines may share.
    On the CPU a size must be configured, since host memory is shared with everything else.
    """
    per_block = bytes_per_block(num_layers, block_size, kv_heads, head_dim, dtype)
    if num_blocks is None:
        if kv_cache_bytes is None:
            if device.type != "cuda":
                raise CacheTooSmall("on the CPU give the KV cache size (kv_cache_bytes or num_blocks)")
            free, total = torch.cuda.mem_get_info(device)
            reserve = (1.0 - gpu_memory_utilization) * total
            num_blocks = int(free - reserve) // per_block
            if num_blocks < 2:
                raise CacheTooSmall(
                    f"no room for a KV cache: {device} has {free / 2**30:.1f} GiB free of "
                    f"{total / 2**30:.1f} GiB and gpu_memory_utilization "
                    f"{gpu_memory_utilization:g} keeps {reserve / 2**30:.1f} GiB back (does "
                    f"another process hold GPU memory?); give the KV cache a size "
                    f"(the decision stage's params.kv_cache_mb) or raise gpu_memory_utilization")
            if max_useful_blocks is not None:
                num_blocks = min(num_blocks, max_useful_blocks)
        else:
            num_blocks = kv_cache_bytes // per_block
    if num_blocks < 2:
        raise CacheTooSmall(
            f"KV cache budget holds {num_blocks} blocks of {per_block} bytes; at least 2 are "
            f"needed (lower the model size or raise gpu_memory_utilization / kv_cache_bytes)")
    return int(num_blocks)


class PagedKVCache:
    def __init__(self, *, num_layers: int, num_blocks: int, block_size: int, kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device):
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = device
        shape = (num_blocks, block_size, kv_heads, head_dim)
        # Zeros, not empty: masked-out reads of never-written slots must stay finite
        # (0 * NaN would poison the attention output).
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


@dataclass
class PrefillChunk:
    """One sequence's chunk of new tokens inside the step's rows."""

    row_start: int
    num_new: int
    context_len: int          # cached tokens + new tokens
    blocks: torch.Tensor      # [n_blocks] long, device: the blocks covering context_len


class StepAttention:
    """Attention metadata for one forward pass; the decoder calls `attend` per layer.

    slot_mapping [T]: cache slot of every row's new K/V.
    decode_block_table [Nd, W], decode_context_lens [Nd]: the first Nd rows are single-token
    decodes; W * block_size >= every context length (the rest is masked).
    prefill: the chunks that follow the decode rows.
    """

    def __init__(self, cache: PagedKVCache, slot_mapping: torch.Tensor,
                 decode_block_table: torch.Tensor | None = None,
                 decode_context_lens: torch.Tensor | None = None,
                 prefill: list[PrefillChunk] = ()):
        self.cache = cache
        self.slot_mapping = slot_mapping
        self.decode_block_table = decode_block_table
        self.decode_context_lens = decode_context_lens
        self.num_decode = 0 if decode_block_table is None else decode_block_table.shape[0]
        self.prefill = list(prefill)
        self._decode_bias = None

    def attend_qkv(self, layer_idx: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   heads: int) -> torch.Tensor:
        """The fused projection [T, (Hq + 2 Hkv) * D] -> out [T, Hq, D]; on the GPU the split,
        rotation and cache write are one kernel."""
        cache = self.cache
        hkv, d = cache.kv_heads, cache.head_dim
        if not kernels.enabled(qkv, "rope"):
            return self.attend(layer_idx, *split_rotate(qkv, cos, sin, heads, hkv, d))
        from autoglm_kernels.rope import rope_qkv
        kc, vc = cache.k[layer_idx], cache.v[layer_idx]
        q, k, v = rope_qkv(qkv, cos, sin, heads, hkv, d, kc.view(-1, hkv, d), vc.view(-1, hkv, d),
                           self.slot_mapping)
        return self._attend_stored(q, k, v, kc, vc)

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] (already rotated) -> out [T, Hq, D].

        Also accepts [T, H*D] or a leading batch dimension of 1; the output has q's shape.
        """
        cache = self.cache
        hkv, d = cache.kv_heads, cache.head_dim
        q_shape = q.shape
        rows = self.slot_mapping.shape[0]
        q = q.reshape(rows, -1, d)
        k = k.reshape(-1, hkv, d)
        v = v.reshape(-1, hkv, d)
        kc, vc = cache.k[layer_idx], cache.v[layer_idx]
        kc.view(-1, hkv, d).index_copy_(0, self.slot_mapping, k.to(kc.dtype))
        vc.view(-1, hkv, d).index_copy_(0, self.slot_mapping, v.to(vc.dtype))
        return self._attend_stored(q, k, v, kc, vc).reshape(q_shape)

    def _attend_stored(self, q, k, v, kc, vc) -> torch.Tensor:
        """Attention once the step's k/v are in the cache: decode rows, then prefill chunks."""
        if not self.prefill:
            return self._attend_decode(q, kc, vc)
        out = torch.empty_like(q)
        nd = self.num_decode
        if nd:
            out[:nd] = self._attend_decode(q[:nd], kc, vc)
        for chunk in self.prefill:
            rows = slice(chunk.row_start, chunk.row_start + chunk.num_new)
            out[rows] = self._attend_chunk(q[rows], k[rows], v[rows], kc, vc, chunk)
        return out

    def commit(self, n_tokens: int) -> None:
        # Token counts are the engine's host state; nothing to advance here.
        pass

    def _attend_decode(self, q, kc, vc):
        if kernels.enabled(q, "attention"):
            from autoglm_kernels.attention import paged_decode_attention
            return paged_decode_attention(q, kc, vc, self.decode_block_table,
                                          self.decode_context_lens)
        # GQA without repeating K/V: the query heads sharing a KV head become that head's
        # "query length", which is exact for one-token decode.
        nd, hq, d = q.shape
        hkv, bs = self.cache.kv_heads, self.cache.block_size
        table = self.decode_block_table
        width = table.shape[1] * bs
        keys = kc[table].view(nd, width, hkv, d).transpose(1, 2)
        vals = vc[table].view(nd, width, hkv, d).transpose(1, 2)
        if self._decode_bias is None:
            pos = torch.arange(width, device=q.device)
            visible = pos[None, :] < self.decode_context_lens[:, None]
            bias = torch.zeros(visible.shape, dtype=q.dtype, device=q.device)
            self._decode_bias = bias.masked_fill_(~visible, float("-inf"))[:, None, None, :]
        qg = q.view(nd, hkv, hq // hkv, d)
        out = F.scaled_dot_product_attention(qg, keys, vals, attn_mask=self._decode_bias)
        return out.reshape(nd, hq, d)

    def _attend_chunk(self, q, k_new, v_new, kc, vc, chunk: PrefillChunk):
        n, hq, d = q.shape
        hkv = self.cache.kv_heads
        if chunk.context_len == n:
            # Nothing cached before this chunk: attend over the fresh K/V directly.
            keys, vals = k_new, v_new
            mask, causal = None, True
        else:
            keys = kc[chunk.blocks].view(-1, hkv, d)[:chunk.context_len]
            vals = vc[chunk.blocks].view(-1, hkv, d)[:chunk.context_len]
            start = chunk.context_len - n
            key_pos = torch.arange(chunk.context_len, device=q.device)
            query_pos = torch.arange(start, chunk.context_len, device=q.device)
            mask, causal = key_pos[None, :] <= query_pos[:, None], False
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], keys.to(q.dtype).transpose(0, 1)[None],
            vals.to(q.dtype).transpose(0, 1)[None], attn_mask=mask, is_causal=causal,
            enable_gqa=hq != hkv)
        return out[0].transpose(0, 1)
