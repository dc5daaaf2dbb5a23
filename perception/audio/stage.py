"""The audio stage: perception.audio's AudioPipeline on the PCM the gateway wrote
(params.compute = "model"), or the minimal random-projection stand-in of the plumbing tests
(params.compute = "minimal").

Model compute, mode per deployment (params.mode):
- "embed": for every request with audio, each clip's float32 mono 16 kHz PCM (the gateway
  resamples before writing, so the token count it put in the prompt is exact) is read from its
  `pcm` slot, encoded (log-mel -> Whisper encoder -> adapter into the decoder width) and the
  [n_tokens, decoder_hidden] float32 embeddings written to the `embeddings` pool, one slot per
  clip, announced by `modality_ready` (modality "audio", detail JSON {"key": "audioN"}).
  The prompt contract (runtime.compute.audio_placeholder): begin, n x token, end per clip.
- "transcribe": the clip is transcribed; the `done` event of the request carries
  {"texts": [...]} in its detail. (The gateway does not use this mode yet.)
Bad audio fails that request with an error event; the stage carries on.
"""
from __future__ import annotations

import numpy as np

from runtime.compute import fixed_projection, shm_ref, slot_ref

MODALITY = "audio"


class MinimalAudioStage:
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




class ModelAudioStage:
    def __init__(self, ctx):
        from perception.audio import AudioPipeline
        from runtime.compute import resolve_model_dir

        self.ctx = ctx
        self.mode = str(ctx.params.get("mode", "embed"))
        backend = {"torch": "torch", "onnxruntime": "onnx", "numpy": "torch"}[ctx.stage.backend]
        device = "cuda" if ctx.stage.gpu.startswith("cuda") else "cpu"
        if device == "cuda":
            import torch
            if not torch.cuda.is_available():
                ctx.log("CUDA is not available: the audio encoder runs on the CPU")
                device = "cpu"
        self.model_dir = resolve_model_dir(ctx)
        self.pipe = AudioPipeline.from_dir(self.model_dir, mode=self.mode, backend=backend,
                                           device=device,
                                           threads=ctx.params.get("threads") or None)
        self.out_channel = ctx.stage.outputs[0] if ctx.stage.outputs else "embeddings"
        self.put_timeout = float(ctx.params.get("put_timeout_s", 10.0))
        ctx.log(f"audio pipeline ({self.mode}, {backend} on {device}) from {self.model_dir}")

    def on_request(self, req) -> None:
        import json

        from runtime.compute import shm_ref, slot_ref

        mods = list(req.modalities)
        at = [i for i, m in enumerate(mods) if m == MODALITY]
        if not at:
            return
        rid = req.request_id
        self.ctx.begin(rid)
        texts = []
        for n, i in enumerate(at):
            ref = slot_ref(req.media[i])
            try:
                pcm_pool = self.ctx.pool(ref.channel)
                try:
                    pcm = np.array(pcm_pool.read(ref), dtype=np.float32)
                finally:
                    pcm_pool.release(ref)
                result = self.pipe.process(pcm, SAMPLE_RATE)
                if self.mode == "embed":
                    emb = np.ascontiguousarray(result.embeddings, dtype=np.float32)
                    out = self.ctx.pool(self.out_channel).put(emb, readers=1,
                                                              timeout=self.put_timeout)
            except Exception as e:
                for j in at[n + 1:]:
                    try:
                        self.ctx.pool(req.media[j].channel).release(slot_ref(req.media[j]))
                    except Exception:
                        pass
                self.ctx.fail(rid, f"audio: clip {n}: {e}")
                return
            if self.mode == "embed":
                self.ctx.emit("modality_ready", rid, modality=MODALITY,
                              output=shm_ref(out, emb.nbytes), n_tokens=emb.shape[0],
                              detail=json.dumps({"key": f"audio{n}"}))
            else:
                texts.append(result.text)
        self.ctx.finish(rid, n_tokens=len(at),
                        detail=json.dumps({"texts": texts}) if texts else "")


SAMPLE_RATE = 16000  # what the gateway writes into the pcm pool


def make_stage(ctx):
    from runtime.compute import compute_kind

    if compute_kind(ctx) == "model":
        return ModelAudioStage(ctx)
    return MinimalAudioStage(ctx)
