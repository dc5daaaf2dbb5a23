"""Decode attention straight from the paged KV cache (one query token per sequence).

The torch path gathers every sequence's blocks into a dense [B, W * block_size] copy per
layer and runs SDPA over it with a padding mask. Here each program reads its tokens' K/V
rows through the block table in place and keeps an online softmax (flash-decoding):

    grid (sequence, kv head, split): the Hq / Hkv query heads that share a KV head are one
    [G, D] tile, so K and V are read once per KV head; the context is cut into splits so a
    batch-1 step still spreads over many SMs. A second small kernel merges the splits.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# Splits per sequence at most; longer contexts get longer splits instead of more.
MAX_SPLITS = 32
MIN_SPLIT_TOKENS = 64


@triton.jit
def _decode_split_kernel(q_ptr, k_cache_ptr, v_cache_ptr, table_ptr, lens_ptr,
                         m_ptr, l_ptr, acc_ptr, scale, table_stride, num_splits,
                         HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    kh = tl.program_id(1)
    split = tl.program_id(2)
    G: tl.constexpr = HQ // HKV
    context = tl.load(lens_ptr + seq)
    start = split * SPLIT
    end = tl.minimum(start + SPLIT, context)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    gm, dm = g < G, d < D
    heads = kh * G + g
    q = tl.load(q_ptr + (seq * HQ + heads[:, None]) * D + d[None, :],
                mask=gm[:, None] & dm[None, :], other=0.0)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        tok = n0 + tl.arange(0, BLOCK_N)
        valid = tok < end
        block = tl.load(table_ptr + seq * table_stride + tok // BLOCK_SIZE, mask=valid, other=0)
        row = (block.to(tl.int64) * BLOCK_SIZE + tok % BLOCK_SIZE) * HKV + kh
        kv_mask = valid[:, None] & dm[None, :]
        k = tl.load(k_cache_ptr + row[:, None] * D + d[None, :], mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        v = tl.load(v_cache_ptr + row[:, None] * D + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new

    # Partials [B, HQ, splits(, D)]; an empty split leaves m = -inf, l = 0, which merges as 0.
    part = (seq * HQ + heads) * num_splits + split
    tl.store(m_ptr + part, m_i, mask=gm)
    tl.store(l_ptr + part, l_i, mask=gm)
    tl.store(acc_ptr + part[:, None] * D + d[None, :], acc, mask=gm[:, None] & dm[None, :])


@triton.jit
def _merge_splits_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, num_splits,
                         D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    head_row = tl.program_id(0).to(tl.int64)     # seq * HQ + head
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    sm, dm = s < num_splits, d < D
    m = tl.load(m_ptr + head_row * num_splits + s, mask=sm, other=float("-inf"))
    l = tl.load(l_ptr + head_row * num_splits + s, mask=sm, other=0.0)
    m_max = tl.max(m, axis=0)   # finite: every sequence has at least one token
    w = tl.where(sm & (l > 0), tl.exp(m - m_max), 0.0)
    acc = tl.load(acc_ptr + (head_row * num_splits + s[:, None]) * D + d[None, :],
                  mask=sm[:, None] & dm[None, :], other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(out_ptr + head_row * D + d, out.to(out_ptr.dtype.element_ty), mask=dm)


def split_tokens(max_context: int) -> int:
    """Tokens per split for contexts up to `max_context` (a power of two >= 64)."""
    need = -(-max_context // MAX_SPLITS)
    return max(MIN_SPLIT_TOKENS, triton.next_power_of_2(need))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_table: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
    """q [B, Hq, D]; caches [num_blocks, block_size, Hkv, D]; block_table [B, W] (int);
    context_lens [B] -> out [B, Hq, D]: softmax(q k^T / sqrt(D)) v over each sequence's first
    context_lens[b] cached tokens.

    The grid depends only on B and W, never on the lengths' values, so the call can be
    captured in a CUDA graph and replayed with new lengths and tables.
    """
    b, hq, d = q.shape
    _, block_size, hkv, _ = k_cache.shape
    if hq % hkv:
        raise ValueError(f"{hq} query heads are not a multiple of {hkv} KV heads")
    q = q.contiguous()
    split = split_tokens(block_table.shape[1] * block_size)
    num_splits = -(-block_table.shape[1] * block_size // split)
    m = torch.empty(b, hq, num_splits, dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)
    acc = torch.empty(b, hq, num_splits, d, dtype=torch.float32, device=q.device)
    _decode_split_kernel[(b, hkv, num_splits)](
        q, k_cache, v_cache, block_table, context_lens, m, l, acc, 1.0 / math.sqrt(d),
        block_table.stride(0), num_splits, HQ=hq, HKV=hkv, D=d, BLOCK_SIZE=block_size,
        SPLIT=split, BLOCK_N=min(split, 64), BLOCK_G=max(16, triton.next_power_of_2(hq // hkv)),
        BLOCK_D=max(16, triton.next_power_of_2(d)), num_warps=4)
    out = torch.empty_like(q)
    _merge_splits_kernel[(b * hq,)](m, l, acc, out, num_splits, D=d,
                                    BLOCK_S=triton.next_power_of_2(num_splits),
                                    BLOCK_D=triton.next_power_of_2(d), num_warps=1)
    return out
