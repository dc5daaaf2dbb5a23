"""Normalise and patchify a resized uint8 image with torch, on any device.

Bit-identical to ImageProcessor.preprocess (same lookup table, same patch order) but runs
where the tower runs: the CPU keeps only decoding and the bicubic resize, and 1 byte per
pixel value crosses to the GPU instead of 8 (float32, duplicated over T). Meant for CUDA:
on CPU the numpy path in ImageProcessor is faster.
"""
from __future__ import annotations

import numpy as np
import torch

from .processor import ImageProcessor


class DevicePatchifier:
    def __init__(self, processor: ImageProcessor, device: str | torch.device = "cpu"):
        self.proc = processor
        self.device = torch.device(device)
        self.table = torch.from_numpy(processor.normalisation_table.copy()).to(self.device)
        self.offsets = torch.arange(3, device=self.device, dtype=torch.int32) * 256

    def __call__(self, pixels: np.ndarray | torch.Tensor
                 ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """uint8 (H, W, 3) resized image -> (float32 [n_patches, 3*T*p*p], grid_thw)."""
        p, m, t = self.proc.patch_size, self.proc.merge_size, self.proc.temporal_patch_size
        x = torch.as_tensor(pixels)
        if x.dtype != torch.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) image, got {x.dtype} {tuple(x.shape)}")
        h, w, c = x.shape
        if h % (p * m) or w % (p * m):
            raise ValueError(f"image {w}x{h} is not resized to multiples of {p * m}; "
                             f"use ImageProcessor.resize first")
        gh, gw = h // p, w // p
        index = x.to(self.device, non_blocking=True).int() + self.offsets
        index = index.view(gh // m, m, p, gw // m, m, p, c).permute(0, 3, 1, 4, 6, 2, 5)
        patches = self.table[index]  # (gh/m, gw/m, m, m, C, p, p), contiguous
        patches = patches.unsqueeze(5).expand(*patches.shape[:5], t, p, p)
        return patches.reshape(gh * gw, c * t * p * p), (1, gh, gw)
