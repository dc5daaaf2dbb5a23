"""Layers shared by the vision tower and the GLM decoder."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import autoglm_kernels as kernels


class Linear(nn.Linear):
    """nn.Linear whose few-row calls on the GPU (decode steps) run autoglm_kernels.gemv, which
    reads the weight closer to HBM bandwidth than cuBLAS does at batch 1-16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (kernels.enabled(x, "gemv") and x.numel() <= kernels.GEMV_MAX_ROWS * x.shape[-1]
                and x.dtype == self.weight.dtype and self.weight.is_contiguous()):
            from autoglm_kernels.gemv import gemv
            return gemv(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32, cast back before the weight multiply.

    GLM checkpoints are trained with exactly this order (normalise in fp32, cast to the
    activation dtype, then scale), so bf16 results match the reference bit for bit.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.enabled(x, "norm") and x.dtype == self.weight.dtype:
            from autoglm_kernels.norm import rms_norm
            return rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def add_norm_pair(residual: torch.Tensor, a: torch.Tensor, post: RMSNorm,
                  next_norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """GLM-4's sandwich step: r = residual + post(a), then (r, next_norm(r)); one kernel on
    the GPU."""
    if kernels.enabled(a, "norm") and a.dtype == residual.dtype == post.weight.dtype == next_norm.weight.dtype:
        from autoglm_kernels.norm import add_norm_pair as fused
        return fused(residual, a, post.weight, post.eps, next_norm.weight, next_norm.eps)
    r = residual + post(a)
    return r, next_norm(r)


def activation(name: str):
    """The activation function a config names (`hidden_act`)."""
    table = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu, "relu": F.relu,
             "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


class SwiGLU(nn.Module):
    """down(act(gate(x)) * up(x)) with separate gate and up projections."""

    def __init__(self, dim: int, hidden: int, act: str = "silu", bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class FusedGateUpMLP(nn.Module):
    """GLM-4's MLP: one gate_up projection (first half gate, second half up), then down."""

    def __init__(self, dim: int, hidden: int, act: str = "silu"):
        super().__init__()
        self.gate_up_proj = Linear(dim, 2 * hidden, bias=False)
        self.down_proj = Linear(hidden, dim, bias=False)
        self.act = activation(act)
        self.is_silu = self.act is F.silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if self.is_silu and kernels.enabled(gate_up, "activation"):
            from autoglm_kernels.activation import silu_mul
            return self.down_proj(silu_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(up * self.act(gate))
