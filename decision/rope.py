"""GLM-4.1V's 3-section multimodal rotary embedding (M-RoPE).

Only the first `rotary_dim` (= head_dim * partial_rotary_factor) dims of each head rotate,
and they rotate in INTERLEAVED pairs (2i, 2i+1), GPT-J style. The rotary_dim/2 frequencies
are split by `mrope_section` (e.g. [8, 12, 12]): frequency i in the first section takes the
temporal position, in the second the height position, in the third the width position.
For text tokens the three positions are equal, which reduces to ordinary 1-D RoPE.
"""
from __future__ import annotations

import torch

from modelcore.config import ConfigError, TextConfig


class MRope:
    """Builds cos/sin tables for a batch of 3-D positions and applies them to q and k."""

    def __init__(self, cfg: TextConfig, device: torch.device | str = "cpu"):
        rd = cfg.rotary_dim
        if rd <= 0 or rd % 2 or rd > cfg.head_dim:
            raise ConfigError(f"rotary_dim {rd} (head_dim {cfg.head_dim} x partial_rotary_factor "
                              f"{cfg.partial_rotary_factor}) must be even and within head_dim")
        if sum(cfg.mrope_section) != rd // 2:
            raise ConfigError(f"mrope_section {list(cfg.mrope_section)} sums to "
                              f"{sum(cfg.mrope_section)}; it must equal rotary_dim/2 = {rd // 2}")
        self.rotary_dim = rd
        self.sections = tuple(cfg.mrope_section)
        self.inv_freq = 1.0 / (cfg.rope_theta ** (
            torch.arange(0, rd, 2, dtype=torch.float32, device=device) / rd))
        # Which of the 3 position components drives each frequency: section k -> k % 3.
        comp = [k % 3 for k, n in enumerate(self.sections) for _ in range(n)]
        self.component = torch.tensor(comp, dtype=torch.long, device=device)

    def to(self, device) -> "MRope":
        self.inv_freq = self.inv_freq.to(device)
        self.component = self.component.to(device)
        return self

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [3, N] -> cos, sin [N, rotary_dim], computed in fp32, cast to `dtype`."""
        freqs = positions[..., None].float() * self.inv_freq  # [3, N, rd/2]
        # Pick, for every frequency, the component its section uses.
        idx = self.component.view(1, 1, -1).expand(1, freqs.shape[1], -1)
        freqs = freqs.gather(0, idx)[0]  # [N, rd/2]
        freqs = freqs.repeat_interleave(2, dim=-1)  # interleaved pairs share a frequency
        return freqs.cos().to(dtype), freqs.sin().to(dtype)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): rotation by 90 degrees per pair."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((-odd, even), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, head_dim]; cos/sin [N, rotary_dim]. Dims past rotary_dim pass through."""
    rd = cos.shape[-1]
    cos, sin = cos[:, None, :], sin[:, None, :]
    rot, rest = x[..., :rd], x[..., rd:]
    rot = rot * cos + _rotate_pairs(rot) * sin
    return torch.cat((rot, rest), dim=-1)


def split_rotate(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int,
                 kv_heads: int, head_dim: int):
    """The fused projection's output [N, (Hq + 2 Hkv) * D] -> q [N, Hq, D], k, v [N, Hkv, D],
    q and k rotated (autoglm_kernels.rope.rope_qkv does the same in one launch)."""
    n = qkv.shape[0]
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = apply_rope(q.view(n, heads, head_dim), cos, sin)
    k = apply_rope(k.view(n, kv_heads, head_dim), cos, sin)
    return q, k, v.view(n, kv_heads, head_dim)
