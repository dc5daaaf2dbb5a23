"""The GLM-4.1V vision tower: patches -> embeddings in the decoder's width.

    patch_embed (Conv3d k=s=[2,14,14], as a matmul) -> post_conv_layernorm
    + learned 24x24 position table, bicubically resampled to each image's patch grid
    -> depth x [x += attn(norm1 x) with 2D rotary, per image; x += SwiGLU(norm2 x)]
    -> post_layernorm -> downsample (Conv2d k=s=2 over each 2x2 merge group, as a matmul)
    -> merger (proj, LayerNorm, GELU, SwiGLU)

Patches arrive merge-ordered (each 2x2 group contiguous, groups in raster order), as
ImageProcessor produces them, so the 2x2 downsample is a reshape and a matrix product.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelcore.checkpoint import CheckpointReader, load_module
from modelcore.config import ModelConfig, VisionConfig
from modelcore.layers import RMSNorm

from .layers import PatchMerger, PositionTable, VisionBlock, WeightAndBias
from .processor import ProcessedImage

CHECKPOINT_PREFIX = "model.visual."

Grid = tuple[int, int, int]


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        d, p, t = cfg.hidden_size, cfg.patch_size, cfg.temporal_patch_size
        if cfg.head_dim % 4:
            raise ValueError(f"vision head_dim {cfg.head_dim} must be a multiple of 4 (2D rotary)")
        self.patch_embed = nn.Module()
        self.patch_embed.proj = WeightAndBias((d, cfg.in_channels, t, p, p))
        self.post_conv_layernorm = RMSNorm(d, cfg.rms_norm_eps)
        self.embeddings = PositionTable((cfg.image_size // p) ** 2, d)
        # The block MLP's hidden width is out_hidden_size (4096 in GLM-4.1V), not
        # intermediate_size: that one belongs to the merger. transformers does the same.
        self.blocks = nn.ModuleList(
            VisionBlock(d, cfg.num_heads, cfg.out_hidden_size, cfg.hidden_act, cfg.rms_norm_eps,
                        cfg.attention_bias) for _ in range(cfg.depth))
        self.post_layernorm = RMSNorm(d, cfg.rms_norm_eps)
        m = cfg.spatial_merge_size
        self.downsample = WeightAndBias((cfg.out_hidden_size, d, m, m))
        self.merger = PatchMerger(cfg.out_hidden_size, cfg.intermediate_size, cfg.hidden_act)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_dir: str | Path, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> VisionTower:
        """Build from config.json and load only the `model.visual.*` tensors."""
        cfg = ModelConfig.from_dir(model_dir).vision
        return cls.from_reader(cfg, CheckpointReader(model_dir), dtype=dtype, device=device)

    @classmethod
    def from_reader(cls, cfg: VisionConfig, reader: CheckpointReader,
                    dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> VisionTower:
        with torch.device("meta"):  # no throwaway random init of ~0.9 B parameters
            tower = cls(cfg)
        load_module(tower, reader, CHECKPOINT_PREFIX, dtype=dtype, device=device)
        return tower.eval().requires_grad_(False)

    @classmethod
    def from_state_dict(cls, cfg: VisionConfig, state: dict[str, torch.Tensor]) -> VisionTower:
        """Build around tensors already in memory (keys as below `model.visual.`)."""
        with torch.device("meta"):
            tower = cls(cfg)
        tower.load_state_dict(state, strict=True, assign=True)
        return tower.eval().requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.post_layernorm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.post_layernorm.weight.device

    # ---- forward ------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, grid_thw: Sequence[Grid],
                out: torch.Tensor | None = None) -> torch.Tensor:
        """[n_patches, C*T*p*p] patches of the images in `grid_thw` -> [n_tokens, out_hidden].

        out: a [n_tokens, out_hidden] tensor of the tower's device and dtype that receives
        the result (the vision stage passes a loaned shm slot: no copy after the tower)."""
        grids = [tuple(int(v) for v in g) for g in grid_thw]
        lengths = self._check_input(pixel_values, grids)
        x = pixel_values.to(device=self.device, dtype=self.dtype)

        w = self.patch_embed.proj
        x = F.linear(x, w.weight.view(w.weight.shape[0], -1), w.bias)
        x = self.post_conv_layernorm(x)

        rows, cols, grid_h, grid_w = self._patch_coordinates(grids)
        x = x + self._sampled_positions(rows, cols, grid_h, grid_w).to(x.dtype)
        cos, sin = self._rotary(rows, cols)
        for block in self.blocks:
            x = block(x, cos, sin, lengths)
        x = self.post_layernorm(x)

        # Conv2d(k=s=merge) over a merge group == one matmul over the group's m*m patches.
        m2 = self.cfg.spatial_merge_size ** 2
        groups = x.view(-1, m2, x.shape[-1]).transpose(1, 2).reshape(-1, m2 * x.shape[-1])
        ds = self.downsample
        x = F.linear(groups, ds.weight.view(ds.weight.shape[0], -1), ds.bias)
        return self.merger(x, out=out)

    @torch.inference_mode()
    def encode(self, images: Sequence[ProcessedImage]) -> list[torch.Tensor]:
        """Embeddings of each image ([n_tokens_i, out_hidden]) from one batched forward."""
        if not images:
            return []
        pixels = torch.from_numpy(np.concatenate([im.pixel_values for im in images]))
        if self.device.type == "cuda":
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        out = self(pixels, [im.grid_thw for im in images])
        return list(out.split([im.num_tokens for im in images]))

    def num_tokens(self, grid: Grid) -> int:
        return grid[0] * grid[1] * grid[2] // self.cfg.spatial_merge_size ** 2

    # ---- helpers ------------------------------------------------------------------------
    def _check_input(self, pixel_values: torch.Tensor, grids: list[Grid]) -> list[int]:
        c = self.cfg
        width = c.in_channels * c.temporal_patch_size * c.patch_size ** 2
        if pixel_values.ndim != 2 or pixel_values.shape[1] != width:
            raise ValueError(f"pixel_values must be [n_patches, {width}], "
                             f"got {tuple(pixel_values.shape)}")
        if not grids:
            raise ValueError("grid_thw is empty")
        m = c.spatial_merge_size
        for g in grids:
            if len(g) != 3 or g[0] != 1 or g[1] % m or g[2] % m or g[1] <= 0 or g[2] <= 0:
                raise ValueError(f"grid_thw entry {g} is not (1, h, w) with h, w positive "
                                 f"multiples of {m} (only still images are supported)")
        lengths = [g[1] * g[2] for g in grids]
        if sum(lengths) != pixel_values.shape[0]:
            raise ValueError(f"grid_thw {grids} describes {sum(lengths)} patches, "
                             f"pixel_values has {pixel_values.shape[0]}")
        return lengths

    def _patch_coordinates(self, grids: list[Grid]):
        """Row and column of every patch (merge-group order), and its image's grid size."""
        m = self.cfg.spatial_merge_size
        rows, cols, gh, gw = [], [], [], []
        for _, h, w in grids:
            r = torch.arange(h, device=self.device).view(h // m, m, 1, 1).expand(h // m, m, w // m, m)
            c = torch.arange(w, device=self.device).view(1, 1, w // m, m).expand(h // m, m, w // m, m)
            # (block row, block col, row in block, col in block) is the patch order.
            rows.append(r.permute(0, 2, 1, 3).reshape(-1))
            cols.append(c.permute(0, 2, 1, 3).reshape(-1))
            gh.append(torch.full((h * w,), float(h), device=self.device))
            gw.append(torch.full((h * w,), float(w), device=self.device))
        return torch.cat(rows), torch.cat(cols), torch.cat(gh), torch.cat(gw)

    def _sampled_positions(self, rows, cols, grid_h, grid_w) -> torch.Tensor:
        """The learned square position table resampled at each patch centre (bicubic, fp32),
        so any grid size gets a smooth stretch of the pretrained table."""
        table = self.embeddings.position_embedding.weight
        side = round(table.shape[0] ** 0.5)
        image = table.view(side, side, -1).permute(2, 0, 1).unsqueeze(0).float()
        x = (cols + 0.5) / grid_w * 2 - 1
        y = (rows + 0.5) / grid_h * 2 - 1
        grid = torch.stack((x, y), dim=-1).view(1, -1, 1, 2)
        sampled = F.grid_sample(image, grid, mode="bicubic", align_corners=False,
                                padding_mode="border")
        # Round through the table's dtype as the reference does before adding.
        return sampled.view(table.shape[1], -1).t().to(table.dtype)

    def _rotary(self, rows, cols) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [n, head_dim]: head_dim/4 frequencies for the row and for the column,
        laid out [row, col, row, col] so NeoX rotate-half pairs each with itself."""
        quarter = self.cfg.head_dim // 4
        inv_freq = 1.0 / (self.cfg.rope_theta ** (
            torch.arange(0, 2 * quarter, 2, dtype=torch.float, device=self.device) / (2 * quarter)))
        angles = torch.cat((rows[:, None].float() * inv_freq, cols[:, None].float() * inv_freq), -1)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()
