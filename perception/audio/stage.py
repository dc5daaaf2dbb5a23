"""Minimal audio stage compute: framed PCM projected with a fixed random matrix.

For every request with audio it reads float32 mono PCM from the request's media slot, cuts
it into `window`-sample frames, projects each to `hidden` dims, writes float32
[n_frames, hidden] into the `embeddings` pool and announces a modality_ready event. The
log-mel + audio encoder replace `embed()` later.
"""
from __future__ import annotations

import numpy as np

from runtime.compute import fixed_projection, shm_ref, slot_ref

MODALITY = "audio"


class AudioStage:
    def __init__(self, ctx):
        self.ctx = ctx
        self.window = int(ctx.params.get("window", 400))
        self.hidden = int(ctx.params.get("hidden", 64))
        self.proj = fixed_projection(self.window, self.hidden, int(ctx.params.get("seed", 1)))
        self.out_channel = ctx.stage.outputs[0] if ctx.stage.outputs else "embeddings"

    def embed(self, pcm: np.ndarray) -> np.ndarray:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        n = len(pcm) // self.window
        if n == 0:
            raise ValueError(f"{len(pcm)} samples is shorter than one {self.window}-sample window")
        return pcm[: n * self.window].reshape(n, self.window) @ self.proj

    def on_request(self, req) -> None:
        if MODALITY not in req.modalities:
            return
        rid = req.request_id
        self.ctx.begin(rid)
        try:
            ref = slot_ref(req.media[list(req.modalities).index(MODALITY)])
            with self.ctx.pool(ref.channel).view(ref) as pcm:
                emb = self.embed(pcm)
            out = self.ctx.pool(self.out_channel).put(emb, readers=1, timeout=5.0)
        except Exception as e:
            self.ctx.fail(rid, f"audio: {e}")
            return
        self.ctx.emit("modality_ready", rid, modality=MODALITY, output=shm_ref(out, emb.nbytes),
                      n_tokens=emb.shape[0])
        self.ctx.finish(rid, n_tokens=emb.shape[0])


def make_stage(ctx):
    return AudioStage(ctx)
