"""RMSNorm, and GLM-4's sandwich pattern `r = x + post(a); h = next(r)` in one pass.

Rounding follows modelcore.layers.RMSNorm exactly: normalise in fp32, round to the
activation dtype, multiply by the weight and round again; the residual add rounds once more.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms(x, w, eps, n_cols, out_ty: tl.constexpr):
    """fp32 row x -> weight * round(x / rms(x)), rounded to out_ty (returned as fp32)."""
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    normed = (x * rstd).to(out_ty).to(tl.float32)
    return (normed * w).to(out_ty).to(tl.float32)


@triton.jit
def _load_f32(ptr, offsets, mask):
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, n_cols, eps, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    at, mask = tl.program_id(0).to(tl.int64) * n_cols + cols, cols < n_cols
    ty = out_ptr.dtype.element_ty
    h = _rms(_load_f32(x_ptr, at, mask), _load_f32(w_ptr, cols, mask), eps, n_cols, ty)
    tl.store(out_ptr + at, h.to(ty), mask=mask)


@triton.jit
def _add_norm_pair_kernel(res_ptr, a_ptr, w_post_ptr, w_next_ptr, res_out_ptr, h_out_ptr,
                          n_cols, eps_post, eps_next, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    at, mask = tl.program_id(0).to(tl.int64) * n_cols + cols, cols < n_cols
    ty = res_out_ptr.dtype.element_ty
    post = _rms(_load_f32(a_ptr, at, mask), _load_f32(w_post_ptr, cols, mask), eps_post, n_cols, ty)
    r = (_load_f32(res_ptr, at, mask) + post).to(ty)
    tl.store(res_out_ptr + at, r, mask=mask)
    h = _rms(r.to(tl.float32), _load_f32(w_next_ptr, cols, mask), eps_next, n_cols, ty)
    tl.store(h_out_ptr + at, h.to(ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


def _launch_args(n_cols: int) -> dict:
    # One program per row; a 4096-wide row spreads over 8 warps, 16 values per thread.
    block = triton.next_power_of_2(n_cols)
    return dict(BLOCK=block, num_warps=8 if block >= 2048 else 4)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x2 = _rows(x)
    out = torch.empty_like(x2)
    n = x2.shape[1]
    _rms_norm_kernel[(x2.shape[0],)](x2, weight, out, n, eps, **_launch_args(n))
    return out.view(x.shape)


def add_norm_pair(residual: torch.Tensor, a: torch.Tensor, w_post: torch.Tensor, eps_post: float,
                  w_next: torch.Tensor, eps_next: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual + rmsnorm(a) * w_post, rmsnorm(that) * w_next), both [N, H]."""
    res2, a2 = _rows(residual), _rows(a)
    r, h = torch.empty_like(res2), torch.empty_like(res2)
    n = res2.shape[1]
    _add_norm_pair_kernel[(res2.shape[0],)](res2, a2, w_post, w_next, r, h, n, eps_post, eps_next,
                                            **_launch_args(n))
    return r.view(residual.shape), h.view(residual.shape)
