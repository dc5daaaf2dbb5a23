"""Building blocks of the GLM-4.1V vision tower.

Attribute names equal the Hugging Face checkpoint's (`blocks.{i}.attn.qkv`, `merger.proj`,
...) so a module's state_dict keys are the checkpoint's keys below `model.visual.`.
Numerics follow transformers' Glm4v vision classes: RMSNorm and rotary embedding in fp32,
everything else in the weights' dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modelcore.layers import RMSNorm, SwiGLU, activation


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x.float()  # rotation in fp32, as the reference, then back to the compute dtype
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


class VisionAttention(nn.Module):
    """Bidirectional multi-head attention with 2D rotary, restricted to each image."""

    def __init__(self, dim: int, num_heads: int, bias: bool):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"vision hidden_size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                lengths: list[int]) -> torch.Tensor:
        n = x.shape[0]
        # (3, heads, n, head_dim): one layout feeds rotary and SDPA without further copies.
        qkv = self.qkv(x).view(n, 3, self.num_heads, self.head_dim).permute(1, 2, 0, 3)
        q, k, v = qkv.unbind(0)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # 4-D (batch 1) inputs: CUDA's flash / memory-efficient SDPA kernels refuse 3-D ones
        # and would leave the O(n^2)-memory math kernel.
        q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
        if len(lengths) == 1:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            # One SDPA call per image: attention never crosses images, and each call can use
            # the flash / memory-efficient kernels, which a block-diagonal mask would rule out.
            outs = [F.scaled_dot_product_attention(qi, ki, vi) for qi, ki, vi in
                    zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2))]
            out = torch.cat(outs, dim=2)
        return self.proj(out[0].transpose(0, 1).reshape(n, -1))


class VisionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, act: str, eps: float,
                 attention_bias: bool):
        super().__init__()
        self.norm1 = RMSNorm(dim, eps)
        self.norm2 = RMSNorm(dim, eps)
        self.attn = VisionAttention(dim, num_heads, attention_bias)
        self.mlp = SwiGLU(dim, mlp_hidden, act)

    def forward(self, x, cos, sin, lengths):
        x = x + self.attn(self.norm1(x), cos, sin, lengths)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """proj -> LayerNorm -> exact GELU -> SwiGLU, applied to each merged 2x2 token."""

    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=False)
        self.post_projection_norm = nn.LayerNorm(dim, eps=1e-5)
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act = activation(act)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """out: where the result goes (e.g. a shared-memory slot), saving a copy."""
        x = F.gelu(self.post_projection_norm(self.proj(x)))
        h = self.act(self.gate_proj(x)) * self.up_proj(x)
        if out is None:
            return self.down_proj(h)
        return torch.mm(h, self.down_proj.weight.t(), out=out)   # F.linear without bias


class WeightAndBias(nn.Module):
    """Holds a conv's weight and bias in the checkpoint's shapes; the tower applies them as
    a matrix product because kernel == stride makes the convolution one."""

    def __init__(self, weight_shape: tuple[int, ...]):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(weight_shape))
        self.bias = nn.Parameter(torch.empty(weight_shape[0]))


class PositionTable(nn.Module):
    def __init__(self, num_positions: int, dim: int):
        super().__init__()
        self.position_embedding = nn.Embedding(num_positions, dim)
