"""SwiGLU's `up * silu(gate)` over the fused gate_up projection, in one launch.

Rounding follows modelcore.layers.FusedGateUpMLP: silu(gate) rounds to the activation
dtype, then the product rounds again.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_mul_kernel(gate_up_ptr, out_ptr, hidden, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < hidden
    ty = out_ptr.dtype.element_ty
    gate = tl.load(gate_up_ptr + row * 2 * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * 2 * hidden + hidden + cols, mask=mask, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(ty).to(tl.float32)
    tl.store(out_ptr + row * hidden + cols, (up * act).to(ty), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [..., 2F] (gate first) -> up * silu(gate) [..., F]."""
    hidden = gate_up.shape[-1] // 2
    rows = gate_up.reshape(-1, 2 * hidden).contiguous()
    out = rows.new_empty(rows.shape[0], hidden)
    block = 1024
    _silu_mul_kernel[(rows.shape[0], triton.cdiv(hidden, block))](rows, out, hidden, BLOCK=block)
    return out.view(*gate_up.shape[:-1], hidden)
