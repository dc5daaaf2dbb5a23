"""y = x W^T (+ b) for the few rows of a decode step: the weight streamed once, no split-K.

At batch 1-16 a linear layer is a pass over its weight; all that matters is how close the
read gets to HBM bandwidth. In the H100 decoder cuBLAS chose split-K kernels plus a
reduction for the 4096-wide outputs and read the weights at 2.4-2.86 TB/s (6.53 ms of a
batch-1 step); this kernel gives each program BLOCK_N whole output rows and reads them at
2.85 TB/s on average (6.17 ms), lifting batch-1 decode from 136.0 to 145.9 tokens/s in one
run (benchmarks/results/decode-h100-cublas-linears.json against decode-nvidia-h100-80gb-hbm3.json).
Larger batches use cuBLAS.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import GEMV_MAX_ROWS as MAX_ROWS


@triton.jit
def _gemv_one_row_kernel(x_ptr, w_ptr, b_ptr, out_ptr, N, K, HAS_BIAS: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < N
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < K
        w = tl.load(w_ptr + n[:, None].to(tl.int64) * K + k[None, :],
                    mask=nm[:, None] & km[None, :], other=0.0)
        x = tl.load(x_ptr + k, mask=km, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + n, mask=nm, other=0.0).to(tl.float32)
    tl.store(out_ptr + n, y.to(out_ptr.dtype.element_ty), mask=nm)


@triton.jit
def _gemv_rows_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, HAS_BIAS: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    nm, mm = n < N, m < M
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < K
        w = tl.load(w_ptr + n[:, None].to(tl.int64) * K + k[None, :],
                    mask=nm[:, None] & km[None, :], other=0.0)
        x = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=mm[:, None] & km[None, :], other=0.0)
        acc += tl.dot(x, tl.trans(w), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=nm, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + m[:, None] * N + n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mm[:, None] & nm[None, :])


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear for x [..., K] with at most MAX_ROWS rows; weight [N, K] contiguous."""
    k = x.shape[-1]
    rows = x.reshape(-1, k).contiguous()
    m, n = rows.shape[0], weight.shape[0]
    if m > MAX_ROWS:
        raise ValueError(f"gemv takes at most {MAX_ROWS} rows, got {m}")
    out = rows.new_empty(m, n)
    b = bias if bias is not None else weight
    # Configurations: the probe's best for the decoder's shapes.
    if m == 1:
        _gemv_one_row_kernel[(triton.cdiv(n, 16),)](
            rows, weight, b, out, n, k, HAS_BIAS=bias is not None, BLOCK_N=16, BLOCK_K=512,
            num_warps=8, num_stages=3)
    else:
        # 1 KiB of each weight row per stage: 512 bf16 values, 256 fp32 (512 fp32 values in
        # 4 stages would overflow the H100's 227 KiB of shared memory).
        _gemv_rows_kernel[(triton.cdiv(n, 32),)](
            rows, weight, b, out, m, n, k, HAS_BIAS=bias is not None, BLOCK_N=32,
            BLOCK_K=1024 // weight.element_size(), BLOCK_M=MAX_ROWS, num_warps=4, num_stages=4)
    return out.view(*x.shape[:-1], n)
