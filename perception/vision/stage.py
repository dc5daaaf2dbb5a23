"""Minimal vision stage compute: patch embedding of a frame with a fixed random projection.

For every request with an image it reads the uint8 [H, W, 3] frame from the request's media
slot, cuts it into patch x patch tiles, projects each tile to `hidden` dims and writes the
float32 [n_patches, hidden] embeddings into the `embeddings` pool, then announces them with a
modality_ready event (grid_thw = (1, H/patch, W/patch)). The real vision tower replaces
`embed()`; the plumbing stays in runtime/.
"""
from __future__ import annotations

import time

import numpy as np

from runtime.compute import fixed_projection, shm_ref, slot_ref

MODALITY = "image"


class VisionStage:
    def __init__(self, ctx):
        self.ctx = ctx
        self.patch = int(ctx.params.get("patch", 14))
        self.hidden = int(ctx.params.get("hidden", 64))
        self.proj = fixed_projection(self.patch * self.patch * 3, self.hidden,
                                     int(ctx.params.get("seed", 0)))
        self.scale = float(ctx.params.get("scale", 1.0))
        # Simulated compute time (seconds): lets tests hold a request inside the stage.
        self.delay_s = float(ctx.params.get("delay_s", 0.0))
        self.out_channel = ctx.stage.outputs[0] if ctx.stage.outputs else "embeddings"

    def on_config(self, name: str, value) -> None:
        if name == "vision.scale":
            self.scale = float(value)
        elif name == "vision.delay_s":
            self.delay_s = float(value)

    def embed(self, frame: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected a uint8 [H, W, 3] frame, got shape {frame.shape}")
        p = self.patch
        gh, gw = frame.shape[0] // p, frame.shape[1] // p
        if gh == 0 or gw == 0:
            raise ValueError(f"frame {frame.shape[:2]} is smaller than one {p}x{p} patch")
        tiles = (frame[: gh * p, : gw * p].reshape(gh, p, gw, p, 3)
                 .transpose(0, 2, 1, 3, 4).reshape(gh * gw, p * p * 3))
        emb = (tiles.astype(np.float32) / 255.0) @ self.proj * self.scale
        return emb, (1, gh, gw)

    def on_request(self, req) -> None:
        if MODALITY not in req.modalities:
            return  # no image: no work here
        rid = req.request_id
        self.ctx.begin(rid)
        try:
            ref = slot_ref(req.media[list(req.modalities).index(MODALITY)])
            frames = self.ctx.pool(ref.channel)
            with frames.view(ref) as frame:
                emb, grid = self.embed(frame)
            if self.delay_s > 0:
                time.sleep(self.delay_s)
            out = self.ctx.pool(self.out_channel).put(emb, readers=1, timeout=5.0)
        except Exception as e:  # the request fails, the stage lives on
            self.ctx.fail(rid, f"vision: {e}")
            return
        self.ctx.emit("modality_ready", rid, modality=MODALITY, output=shm_ref(out, emb.nbytes),
                      n_tokens=emb.shape[0], grid_thw=list(grid))
        self.ctx.finish(rid, n_tokens=emb.shape[0])


def make_stage(ctx):
    return VisionStage(ctx)
