"""Split the fused q/k/v projection, rotate q and k (partial, interleaved M-RoPE) and write
the new k/v into their KV-cache slots: one launch instead of ~20 small kernels per layer.

Rounding follows decision.rope.apply_rope: `rot * cos` and `rotate_pairs(rot) * sin` each
round to the activation dtype, then their sum rounds again.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_qkv_kernel(qkv_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr,
                     slot_ptr, HQ, HKV, D: tl.constexpr, RD: tl.constexpr,
                     HALF_BLOCK: tl.constexpr, REST_BLOCK: tl.constexpr, D_BLOCK: tl.constexpr,
                     STORE: tl.constexpr):
    # One program per (token, head); heads HQ.. are the KV heads, which also carry v.
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    src = qkv_ptr + (row * (HQ + 2 * HKV) + head) * D
    ty = q_ptr.dtype.element_ty

    pair = tl.arange(0, HALF_BLOCK)
    pm = pair < RD // 2
    x0 = tl.load(src + 2 * pair, mask=pm, other=0.0).to(tl.float32)
    x1 = tl.load(src + 2 * pair + 1, mask=pm, other=0.0).to(tl.float32)
    # cos/sin are repeat-interleaved: entries 2i and 2i+1 hold the same frequency.
    c = tl.load(cos_ptr + row * RD + 2 * pair, mask=pm, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + row * RD + 2 * pair, mask=pm, other=0.0).to(tl.float32)
    out0 = ((x0 * c).to(ty).to(tl.float32) + (-(x1 * s)).to(ty).to(tl.float32)).to(ty)
    out1 = ((x1 * c).to(ty).to(tl.float32) + (x0 * s).to(ty).to(tl.float32)).to(ty)
    rest = tl.arange(0, REST_BLOCK)
    rm = rest < D - RD
    passthrough = tl.load(src + RD + rest, mask=rm, other=0.0)

    if head < HQ:
        dst = q_ptr + (row * HQ + head) * D
        tl.store(dst + 2 * pair, out0, mask=pm)
        tl.store(dst + 2 * pair + 1, out1, mask=pm)
        tl.store(dst + RD + rest, passthrough, mask=rm)
    else:
        kh = head - HQ
        dst = k_ptr + (row * HKV + kh) * D
        tl.store(dst + 2 * pair, out0, mask=pm)
        tl.store(dst + 2 * pair + 1, out1, mask=pm)
        tl.store(dst + RD + rest, passthrough, mask=rm)
        d = tl.arange(0, D_BLOCK)
        dm = d < D
        v = tl.load(src + HKV * D + d, mask=dm, other=0.0)
        tl.store(v_ptr + (row * HKV + kh) * D + d, v, mask=dm)
        if STORE:
            slot = tl.load(slot_ptr + row).to(tl.int64)
            kc = k_cache_ptr + (slot * HKV + kh) * D
            tl.store(kc + 2 * pair, out0, mask=pm)
            tl.store(kc + 2 * pair + 1, out1, mask=pm)
            tl.store(kc + RD + rest, passthrough, mask=rm)
            tl.store(v_cache_ptr + (slot * HKV + kh) * D + d, v, mask=dm)


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
             num_kv_heads: int, head_dim: int, k_cache: torch.Tensor | None = None,
             v_cache: torch.Tensor | None = None, slots: torch.Tensor | None = None):
    """qkv [N, (Hq + 2 Hkv) * D] -> q [N, Hq, D], k, v [N, Hkv, D] with q, k rotated.

    With k_cache / v_cache ([..., Hkv, D], slot-major) and slots [N], k and v are also
    written to slot slots[i] of the caches.
    """
    n = qkv.shape[0]
    qkv = qkv.contiguous()
    rd = cos.shape[-1]
    q = qkv.new_empty(n, num_heads, head_dim)
    k = qkv.new_empty(n, num_kv_heads, head_dim)
    v = qkv.new_empty(n, num_kv_heads, head_dim)
    store = k_cache is not None
    if store and (k_cache.dtype != qkv.dtype or v_cache.dtype != qkv.dtype):
        raise ValueError(f"KV cache dtype {k_cache.dtype} differs from the activations' {qkv.dtype}")
    _rope_qkv_kernel[(n, num_heads + num_kv_heads)](
        qkv, cos.contiguous(), sin.contiguous(), q, k, v,
        k_cache if store else k, v_cache if store else v, slots if store else qkv,
        num_heads, num_kv_heads, D=head_dim, RD=rd,
        HALF_BLOCK=triton.next_power_of_2(max(rd // 2, 1)),
        REST_BLOCK=triton.next_power_of_2(max(head_dim - rd, 1)),
        D_BLOCK=triton.next_power_of_2(head_dim), STORE=store, num_warps=1)
    return q, k, v
