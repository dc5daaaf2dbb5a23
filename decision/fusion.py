"""Fusion: image embeddings into the token sequence, and the 3-D (t, h, w) positions.

Positions follow GLM-4.1V's rule (transformers' `Glm4vModel.get_rope_index`): text tokens
advance one position each on all three components; an image with patch grid (t, H, W)
occupies t * (H/m) * (W/m) tokens (m = spatial merge) in raster order, token (f, r, c) at
(start + f, start + r, start + c); text after it resumes at start + max(H/m, W/m). During
decode every component is cache position + rope_delta, rope_delta = max position + 1 - length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


class FusionError(ValueError):
    """Image placeholders and image embeddings / grids do not agree."""


@dataclass(frozen=True)
class Positions:
    ids: torch.Tensor  # [3, N] long
    rope_delta: int


def image_token_count(grid_thw: Sequence[int], spatial_merge_size: int) -> int:
    t, h, w = (int(v) for v in grid_thw)
    return t * (h // spatial_merge_size) * (w // spatial_merge_size)


def mrope_positions(input_ids: Sequence[int] | torch.Tensor, image_token_id: int,
                    image_grids: Sequence[Sequence[int]] = (), spatial_merge_size: int = 2) -> Positions:
    """Positions [3, N] for one prompt and its rope_delta. Images are consumed in order."""
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    m = spatial_merge_size
    chunks: list[torch.Tensor] = []
    pos = 0  # next position to hand out
    i, n, grid_idx = 0, len(ids), 0
    while i < n:
        if ids[i] != image_token_id:
            j = i
            while j < n and ids[j] != image_token_id:
                j += 1
            chunks.append(torch.arange(pos, pos + j - i).expand(3, -1))
            pos += j - i
            i = j
            continue
        if grid_idx >= len(image_grids):
            raise FusionError(f"image placeholder at token {i} but only {len(image_grids)} "
                              f"image grid(s) were given")
        t, h, w = (int(v) for v in image_grids[grid_idx])
        if h % m or w % m:
            raise FusionError(f"image {grid_idx}: grid {(t, h, w)} not divisible by merge size {m}")
        gh, gw = h // m, w // m
        count = t * gh * gw
        if ids[i:i + count] != [image_token_id] * count:
            run = next((k for k in range(i, n) if ids[k] != image_token_id), n) - i
            raise FusionError(f"image {grid_idx}: grid {(t, h, w)} needs {count} placeholder "
                              f"tokens, the prompt has a run of {run} at token {i}")
        tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw), indexing="ij")
        chunks.append(torch.stack([tt, hh, ww]).reshape(3, -1) + pos)
        pos += max(gh, gw)
        i += count
        grid_idx += 1
    if grid_idx != len(image_grids):
        raise FusionError(f"{len(image_grids)} image grid(s) given but the prompt has "
                          f"placeholders for {grid_idx}")
    if not chunks:
        raise FusionError("empty prompt")
    pos_ids = torch.cat(chunks, dim=1).long()
    return Positions(pos_ids, int(pos_ids.max()) + 1 - n)


def decode_positions(cache_position: int, n_tokens: int, rope_delta: int,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """[3, n] positions for tokens appended after `cache_position` tokens."""
    p = torch.arange(cache_position, cache_position + n_tokens, device=device) + rope_delta
    return p.expand(3, -1)


def merge_image_embeddings(embeds: torch.Tensor, input_ids: torch.Tensor, image_token_id: int,
                           image_embeds: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Replace the rows of `embeds` at image placeholders by the image embeddings, in order."""
    if not isinstance(image_embeds, torch.Tensor):
        image_embeds = torch.cat(list(image_embeds), dim=0) if len(image_embeds) else \
            embeds.new_zeros(0, embeds.shape[-1])
    mask = input_ids == image_token_id
    n_slots = int(mask.sum())
    if n_slots != image_embeds.shape[0]:
        raise FusionError(f"{n_slots} image placeholder tokens but {image_embeds.shape[0]} "
                          f"image embedding rows")
    if n_slots and image_embeds.shape[-1] != embeds.shape[-1]:
        raise FusionError(f"image embeddings have width {image_embeds.shape[-1]}, the decoder "
                          f"expects {embeds.shape[-1]}")
    out = embeds.clone()
    out[mask] = image_embeds.to(device=embeds.device, dtype=embeds.dtype)
    return out
