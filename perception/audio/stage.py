"""The audio stage: perception.audio's AudioPipeline on the PCM the gateway wrote
(params.compute = "model"), or the minimal random-projection stand-in of the plumbing tests
(params.compute = "minimal").

Model compute; params: mode ("embed" | "transcribe", one per deployment), max_seconds (longest
clip accepted; the gateway reads the same value and refuses longer audio with a 400; keep it
within the `pcm` pool's slot_bytes / 64,000), language / task (transcribe: forced Whisper
tokens; default: generation_config.json's), transcribe_timeout_s (how long the gateway waits
for a transcript), threads, put_timeout_s.

PCM contract (both modes): each clip is float32 mono 16 kHz in one `pcm` slot written by the
gateway with readers=1 (the gateway resamples, so embed-mode token counts are exact); this
stage reads it and releases the slot.

- "embed" (per generation Request): every clip of a request with audio is encoded (log-mel ->
  Whisper encoder -> adapter into the decoder width) and the [n_tokens, decoder_hidden]
  float32 embeddings written to the `embeddings` pool, one slot per clip, announced by
  `modality_ready` (modality "audio", detail JSON {"key": "audioN"}). The prompt contract
  (runtime.compute.audio_placeholder): begin, n x token, end per clip.
- "transcribe" (before the generation Request exists): the gateway publishes, per clip, on
  the transcribe topic (control.topics.TRANSCRIBE, which only this stage reads), a
  StageEvent of kind TRANSCRIBE_KIND ("transcribe") with request_id = the generation
  request's id, modality "audio", output = the clip's `pcm` ShmRef, n_tokens = the clip's
  index and detail JSON {"clip": n, "sample_rate": 16000}. The stage answers with its
  `done` event for that request id, detail JSON {"clip": n, "text": "..."} (Whisper greedy,
  timestamps off), or an `error` event: code 400 when the audio itself is unusable
  (AudioInputError; the gateway returns HTTP 400), 500 for anything else; if the stage dies
  mid-clip the supervisor sends `error` code 503. The gateway puts the text in place of the
  audio part and only then submits the generation Request, which carries no audio: the
  decision and vision stages never see transcription. The stage is single-threaded: clips are
  transcribed one at a time in arrival order.
Bad audio fails that request with an error event; the stage carries on.

Trace spans (profiler.emit.SpanEmitter on the runtime's trace writer, emitted after the
result is published so no one waits on them): `audio.encode` around the AudioPipeline work
(both modes: log-mel, encoder, and in transcribe mode Whisper's decoder; attrs encode_ms /
decode_ms split it), then `audio.shm_write` around the embeddings write (embed), or
`audio.transcribe` around the whole transcription job, from taking the PCM out of shm to
the transcript handed back (transcribe).
"""
from __future__ import annotations

import json
import time

import numpy as np

from runtime.compute import fixed_projection, shm_ref, slot_ref

MODALITY = "audio"
SAMPLE_RATE = 16000          # what the gateway writes into the pcm pool
TRANSCRIBE_KIND = "transcribe"  # StageEvent kind the gateway sends to ask for a transcript
CODE_BAD_AUDIO = 400         # error event code: the caller's audio is unusable
CODE_STAGE_FAILURE = 500     # error event code: the stage failed for another reason
DEFAULT_TRANSCRIBE_TIMEOUT_S = 120.0


class MinimalAudioStage:
    request_modality = MODALITY   # reads only the requests that carry it

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


def _tracer(ctx):
    """The runtime's SpanEmitter (ctx.tracer), or one over its trace writer."""
    tracer = getattr(ctx, "tracer", None)
    if tracer is not None:
        return tracer
    from profiler.emit import SpanEmitter
    return SpanEmitter(ctx._rt.w_trace)


class ModelAudioStage:
    request_modality = MODALITY   # reads only the requests that carry it

    def __init__(self, ctx):
        from perception.audio import DEFAULT_MAX_SECONDS, AudioPipeline
        from runtime.compute import resolve_model_dir

        self.ctx = ctx
        p = ctx.params
        self.mode = str(p.get("mode", "embed"))
        backend = {"torch": "torch", "onnxruntime": "onnx", "numpy": "torch"}[ctx.stage.backend]
        device = "cuda" if ctx.stage.gpu.startswith("cuda") else "cpu"
        if device == "cuda":
            import torch
            if not torch.cuda.is_available():
                ctx.log("CUDA is not available: the audio encoder runs on the CPU")
                device = "cpu"
        self.model_dir = resolve_model_dir(ctx)
        self.pipe = AudioPipeline.from_dir(
            self.model_dir, mode=self.mode, backend=backend, device=device,
            language=p.get("language") or None, task=p.get("task") or None,
            max_seconds=float(p.get("max_seconds", DEFAULT_MAX_SECONDS)),
            threads=p.get("threads") or None)
        self.out_channel = ctx.stage.outputs[0] if ctx.stage.outputs else "embeddings"
        self.put_timeout = float(p.get("put_timeout_s", 10.0))
        self.tracer = _tracer(ctx)
        self.device = device
        ctx.log(f"audio pipeline ({self.mode}, {backend} on {device}, max "
                f"{self.pipe.max_seconds:g} s) from {self.model_dir}")
        if device == "cuda":
            self._warm_up()

    def _warm_up(self) -> None:
        """One second of silence through the pipeline before the stage reports ready, so the
        first user's clip does not pay for the first CUDA calls (handles, lazy loads: 0.7 s
        on an H100)."""
        t0 = time.monotonic()
        self.pipe.process(np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
        self.ctx.log(f"warmed up in {time.monotonic() - t0:.1f} s")

    def _read_pcm(self, ref) -> np.ndarray:
        """Own copy of the clip; the slot goes back to the pool at once."""
        pool = self.ctx.pool(ref.channel)
        try:
            return np.array(pool.read(ref), dtype=np.float32)
        finally:
            pool.release(ref)

    def _release(self, refs) -> None:
        for r in refs:  # clips this request will never read
            try:
                self.ctx.pool(r.channel).release(slot_ref(r))
            except Exception:
                pass

    # --- embed: per generation request ---------------------------------------------------
    def on_request(self, req) -> None:
        mods = list(req.modalities)
        at = [i for i, m in enumerate(mods) if m == MODALITY]
        if not at:
            return
        rid = req.request_id
        self.ctx.begin(rid)
        if self.mode != "embed":
            self._release([req.media[i] for i in at])
            self.ctx.fail(rid, "audio: this deployment's audio stage transcribes (mode "
                          "'transcribe'); audio must reach it as a transcription job, not as "
                          "embeddings of a generation request", code=CODE_STAGE_FAILURE)
            return
        for n, i in enumerate(at):
            ref = slot_ref(req.media[i])
            try:
                pcm = self._read_pcm(ref)
                t0 = time.monotonic_ns()
                result = self.pipe.process(pcm, SAMPLE_RATE)
                emb = np.ascontiguousarray(result.embeddings, dtype=np.float32)
                t1 = time.monotonic_ns()
                out = self.ctx.pool(self.out_channel).put(emb, readers=1, timeout=self.put_timeout)
                t2 = time.monotonic_ns()
            except Exception as e:
                self._release([req.media[j] for j in at[n + 1:]])
                self.ctx.fail(rid, f"audio: clip {n}: {e}", code=_code_for(e))
                return
            self.ctx.emit("modality_ready", rid, modality=MODALITY,
                          output=shm_ref(out, emb.nbytes), n_tokens=emb.shape[0],
                          detail=json.dumps({"key": f"audio{n}"}))
            self.tracer.emit("audio.encode", rid, t0, t1, clip=n, mode="embed",
                             seconds=round(result.duration_s, 3), windows=len(result.windows),
                             tokens=int(emb.shape[0]))
            self.tracer.emit("audio.shm_write", rid, t1, t2, clip=n, bytes=int(emb.nbytes))
        self.ctx.finish(rid, n_tokens=len(at))

    # --- transcribe: one clip per job on the transcribe topic --------------------------------
    def on_transcribe(self, ev) -> None:
        if ev.kind != TRANSCRIBE_KIND:
            return
        rid = ev.request_id
        clip = int(ev.n_tokens)
        self.ctx.begin(rid)
        t_job = time.monotonic_ns()
        try:
            info = json.loads(ev.detail) if ev.detail else {}
            clip = int(info.get("clip", clip))
            rate = int(info.get("sample_rate", SAMPLE_RATE))
            if self.mode != "transcribe":
                self._release([ev.output])
                raise RuntimeError("this deployment's audio stage embeds (mode 'embed'); it "
                                   "does not transcribe")
            pcm = self._read_pcm(slot_ref(ev.output))
            t0 = time.monotonic_ns()
            result = self.pipe.process(pcm, rate)
            t1 = time.monotonic_ns()
            text = result.text
        except Exception as e:
            self.ctx.fail(rid, f"audio: clip {clip}: {e}", code=_code_for(e))
            return
        self.ctx.finish(rid, n_tokens=sum(len(w.token_ids or ()) for w in result.windows),
                        detail=json.dumps({"clip": clip, "text": text}))
        self.tracer.emit("audio.encode", rid, t0, t1, clip=clip, mode="transcribe",
                         seconds=round(result.duration_s, 3), windows=len(result.windows),
                         encode_ms=round(sum(w.encode_ms for w in result.windows), 3),
                         decode_ms=round(sum(w.decode_ms for w in result.windows), 3))
        self.tracer.emit("audio.transcribe", rid, t_job, clip=clip, chars=len(text))


def _code_for(exc: Exception) -> int:
    from perception.audio.errors import AudioInputError
    return CODE_BAD_AUDIO if isinstance(exc, AudioInputError) else CODE_STAGE_FAILURE


def make_stage(ctx):
    from runtime.compute import compute_kind

    if compute_kind(ctx) == "model":
        return ModelAudioStage(ctx)
    return MinimalAudioStage(ctx)
