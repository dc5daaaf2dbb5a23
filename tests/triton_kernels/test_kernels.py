"""Each Triton kernel against the torch code it replaces (see autoglm_kernels/)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from decision.rope import split_rotate
from modelcore.layers import RMSNorm

from .conftest import DEVICE, DTYPES, tolerance


def _norm(width: int, eps: float, dtype, gen) -> RMSNorm:
    norm = RMSNorm(width, eps).to(DEVICE, dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(width, generator=gen) + 0.5)
    return norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [96, 4096])
def test_rms_norm_and_sandwich_pair(dtype, width):
    from autoglm_kernels.norm import add_norm_pair, rms_norm
    gen = torch.Generator().manual_seed(width)
    x = (torch.randn(5, width, generator=gen) * 3).to(DEVICE, dtype)
    a = torch.randn(5, width, generator=gen).to(DEVICE, dtype)
    post, nxt = _norm(width, 1e-5, dtype, gen), _norm(width, 1e-6, dtype, gen)
    with torch.no_grad():
        # RMSNorm.forward is the torch reference here: on the CPU it never dispatches, and
        # on the GPU the comparison calls the kernel explicitly.
        ref_norm = _reference_norm(x, post)
        ref_r = x + _reference_norm(a, post)
        ref_h = _reference_norm(ref_r, nxt)
    torch.testing.assert_close(rms_norm(x, post.weight, post.eps), ref_norm, **tolerance(dtype))
    r, h = add_norm_pair(x, a, post.weight, post.eps, nxt.weight, nxt.eps)
    torch.testing.assert_close(r, ref_r, **tolerance(dtype))
    torch.testing.assert_close(h, ref_h, **tolerance(dtype))


def _reference_norm(x, norm: RMSNorm):
    x32 = x.float()
    return norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.eps)).to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(dtype):
    from autoglm_kernels.activation import silu_mul
    gen = torch.Generator().manual_seed(1)
    gate_up = (torch.randn(3, 2 * 1500, generator=gen) * 4).to(DEVICE, dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(silu_mul(gate_up), up * F.silu(gate), **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim,rotary_dim", [(4, 2, 32, 16), (8, 8, 16, 16), (32, 2, 128, 64)])
def test_rope_qkv_rotates_and_writes_the_cache(dtype, heads, kv_heads, head_dim, rotary_dim):
    from autoglm_kernels.rope import rope_qkv
    gen = torch.Generator().manual_seed(heads)
    n = 4
    qkv = torch.randn(n, (heads + 2 * kv_heads) * head_dim, generator=gen).to(DEVICE, dtype)
    angles = (torch.rand(n, rotary_dim // 2, generator=gen) * 50).repeat_interleave(2, dim=-1)
    cos, sin = angles.cos().to(DEVICE, dtype), angles.sin().to(DEVICE, dtype)
    k_cache = torch.zeros(12, 4, kv_heads, head_dim, dtype=dtype, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([3, 17, 5, 46], device=DEVICE)
    q, k, v = rope_qkv(qkv, cos, sin, heads, kv_heads, head_dim,
                       k_cache.view(-1, kv_heads, head_dim), v_cache.view(-1, kv_heads, head_dim), slots)
    ref_q, ref_k, ref_v = split_rotate(qkv, cos, sin, heads, kv_heads, head_dim)
    tol = tolerance(dtype)
    torch.testing.assert_close(q, ref_q, **tol)
    torch.testing.assert_close(k, ref_k, **tol)
    torch.testing.assert_close(v, ref_v, rtol=0, atol=0)
    torch.testing.assert_close(k_cache.view(-1, kv_heads, head_dim)[slots], ref_k, **tol)
    torch.testing.assert_close(v_cache.view(-1, kv_heads, head_dim)[slots], ref_v, rtol=0, atol=0)
    untouched = torch.ones(48, dtype=torch.bool)
    untouched[slots.cpu()] = False
    assert not k_cache.view(48, -1)[untouched.to(DEVICE)].any(), "a slot not in `slots` was written"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (4, 4), (32, 2)])
def test_paged_decode_attention_matches_dense_softmax(dtype, heads, kv_heads):
    from autoglm_kernels.attention import paged_decode_attention
    gen = torch.Generator().manual_seed(heads * 10 + kv_heads)
    head_dim, block_size, num_blocks = 64, 16, 300
    # Ragged contexts: a graph's padding row (1 token), one block edge, and one long enough
    # to need several splits (width 256 blocks = 4096 tokens -> splits of 128 tokens).
    lens = torch.tensor([1, 16, 37, 3001])
    width = 256
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    table = torch.stack([torch.randperm(num_blocks - 1, generator=gen)[:width] + 1 for _ in lens])
    q = torch.randn(len(lens), heads, head_dim, generator=gen).to(DEVICE, dtype)
    out = paged_decode_attention(q, k_cache, v_cache, table.to(DEVICE), lens.to(DEVICE))
    groups = heads // kv_heads
    for b, n in enumerate(lens.tolist()):
        keys = k_cache[table[b].to(DEVICE)].reshape(-1, kv_heads, head_dim)[:n].float()
        vals = v_cache[table[b].to(DEVICE)].reshape(-1, kv_heads, head_dim)[:n].float()
        keys, vals = keys.repeat_interleave(groups, 1), vals.repeat_interleave(groups, 1)
        scores = torch.einsum("hd,nhd->hn", q[b].float(), keys) / math.sqrt(head_dim)
        ref = torch.einsum("hn,nhd->hd", scores.softmax(-1), vals)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(out[b].float(), ref, **tol, msg=lambda m: f"sequence {b}: {m}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv_matches_linear(dtype, rows, with_bias):
    from autoglm_kernels.gemv import gemv
    gen = torch.Generator().manual_seed(rows)
    out_features, in_features = 300, 1100      # neither a multiple of the kernels' tiles
    x = torch.randn(rows, in_features, generator=gen).to(DEVICE, dtype)
    w = (torch.randn(out_features, in_features, generator=gen) * 0.05).to(DEVICE, dtype)
    b = torch.randn(out_features, generator=gen).to(DEVICE, dtype) if with_bias else None
    ref = F.linear(x.float(), w.float(), None if b is None else b.float())
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=2e-2)
    torch.testing.assert_close(gemv(x, w, b).float(), ref, **tol)
    with pytest.raises(ValueError, match="at most 16 rows"):
        gemv(torch.zeros(17, in_features, device=DEVICE, dtype=dtype), w)
