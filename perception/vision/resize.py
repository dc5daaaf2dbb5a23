"""Pillow's bicubic resize of a uint8 RGB image, in torch, bit for bit: for the vision stage's
device, so a screenshot is resized on the GPU instead of on a CPU core (45 ms for a 1080x2400
screenshot with Pillow on the 2-core VM).

Pillow (libImaging/Resample.c) resizes in two separable passes, horizontal then vertical;
since Pillow 13, vertical first when the height loses more than twice the pixels the width
does (ImagingResampleInner's horizontal_first). The order changes some pixels by a level.
For each output pixel of a pass it takes the input pixels within the filter's support
(bicubic, a = -0.5, widened by the scale when shrinking), weights them with coefficients that
sum to 1, turned into integers with 22 fractional bits; sums the integer products with half
an output step added, shifts right by 22 and clips to 0..255, storing uint8 between the passes.
This module computes the same coefficients (float64, as Pillow does) and the same integer sums
(int32 never overflows: the weights' magnitudes sum to ~1.3 * 2**22 at most, times 255).
"""
from __future__ import annotations

import math

import numpy as np
import PIL
import torch

_PRECISION_BITS = 32 - 8 - 2
_BICUBIC_SUPPORT = 2.0
_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


def vertical_first(in_h: int, in_w: int, out_h: int, out_w: int,
                   pillow_major: int = _PILLOW_MAJOR) -> bool:
    """Whether the installed Pillow runs the vertical pass first for this resize."""
    return pillow_major >= 13 and in_h - out_h > 0 and in_h - out_h > (in_w - out_w) * 2


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(first input index per output pixel [out], int32 weights [out, taps]) of one pass,
    as Pillow's precompute_coeffs and normalize_coeffs_8bpc compute them; taps past an
    output pixel's window weigh 0."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _BICUBIC_SUPPORT * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    # C's (int) truncates toward zero; center - support + 0.5 can be negative, then clamped.
    xmin = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(centers + support + 0.5), in_size).astype(np.int64) - xmin
    x = np.arange(taps, dtype=np.float64)[None, :]
    w = _bicubic((x + xmin[:, None] - centers[:, None] + 0.5) / filterscale)
    w = np.where(x < xmax[:, None], w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0.0)
    # Round half away from zero, as the C code's (int)(+-0.5 + k * 2**22) does.
    fixed = np.trunc(w * (1 << _PRECISION_BITS) + np.where(w < 0, -0.5, 0.5))
    return xmin, fixed.astype(np.int32)


def _pass(image: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    """One pass along `dim` (0: rows, 1: columns) of an int32 [H, W, C] image."""
    start, weights = coefficients(image.shape[dim], out_size)
    index = torch.from_numpy(start[:, None] + np.arange(weights.shape[1])).to(image.device)
    index = index.clamp_(max=image.shape[dim] - 1)        # zero-weight taps past the edge
    weights = torch.from_numpy(weights).to(image.device)
    shape = list(image.shape)
    shape[dim] = out_size
    acc = torch.full(shape, 1 << (_PRECISION_BITS - 1), dtype=torch.int32, device=image.device)
    # One tap at a time: a gather the size of the output, not of output x taps (~7x less
    # memory); integer sums do not depend on the order they are taken in.
    for k in range(weights.shape[1]):
        if dim == 1:
            acc += image[:, index[:, k]] * weights[None, :, k, None]
        else:
            acc += image[index[:, k]] * weights[:, k, None, None]
    return (acc >> _PRECISION_BITS).clamp_(0, 255)


def resize_bicubic(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [H, W, C] (any device) -> uint8 [height, width, C] on the same device, the
    bytes `PIL.Image.resize((width, height), BICUBIC)` gives for the same image."""
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise ValueError(f"expected a uint8 [H, W, C] image, got {image.dtype} {tuple(image.shape)}")
    out = image.to(torch.int32)
    passes = [(1, width), (0, height)]
    if vertical_first(image.shape[0], image.shape[1], height, width):
        passes.reverse()
    for dim, size in passes:
        if size != out.shape[dim]:
            out = _pass(out, dim, size)
    return out.to(torch.uint8)
