"""The execution stage: the OpenAI-compatible HTTP gateway inside the pipeline
(params.compute = "model"), or the minimal egress-only stand-in of the plumbing tests
(params.compute = "minimal", which publishes each request's token ids in its `done` event).

Model compute: builds the gateway (execution.server.build_gateway_app: tokenizer, chat
template and image processor of the model directory; the shm/DDS client of this instance)
and serves it with uvicorn in a thread of this process, on its own event loop, at the spec's
[http] host/port (`autoglm launch --host/--port` override them). The stage announces `ready`
only once the socket listens. Gateway settings come from params: served_model_names, api_key,
max_model_len (default: the decision stage's, else the model's), max_images, max_audios (both
at most the slots of their pools), response_cache_size. The audio stage's mode decides whether audio placeholders go into prompts.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from runtime.compute import request_key
from runtime.records import FLAG_ERROR, FLAG_LAST
from runtime.spec import format_cores, parse_cores

EARLY_KEEP_S = 10.0


class MinimalGatewayStage:
    def __init__(self, ctx):
        self.ctx = ctx
        self.in_channel = ctx.stage.inputs[0] if ctx.stage.inputs else "tokens"
        self.reader = ctx.ring(self.in_channel).reader(start="latest")
        self.by_key: dict[int, str] = {}       # request key -> request id
        self.tokens: dict[str, list[int]] = {}
        # Records can outrun the request over DDS (another transport): keep them a while.
        self.early: dict[int, tuple[float, list]] = {}

    def on_request(self, req) -> None:
        rid = req.request_id
        self.by_key[request_key(rid)] = rid
        self.tokens[rid] = []
        self.ctx.begin(rid)
        _, recs = self.early.pop(request_key(rid), (0.0, []))
        for rec in recs:
            self._take(rid, rec)

    def on_event(self, ev) -> None:
        if ev.kind in ("error", "cancelled") and ev.request_id in self.tokens:
            self._forget(ev.request_id)
            self.ctx.finish(ev.request_id, kind="cancelled", detail=f"failed upstream: {ev.detail}")

    def poll(self, timeout: float) -> None:
        """Wait on the tokens doorbell (at most 50 ms: a signal does not end this wait) and
        hand out what arrived."""
        batch = self.reader.read(timeout=min(timeout, 0.05))
        if batch.lost:
            self.ctx.log(f"lost {batch.lost} token records (reader lapped)")
        now = time.monotonic()
        for rec in batch.records:
            key = int(rec["request_key"])
            rid = self.by_key.get(key)
            if rid is None:
                self.early.setdefault(key, (now, []))[1].append(rec.copy())
                continue
            self._take(rid, rec)
        for key in [k for k, (t, _) in self.early.items() if now - t > EARLY_KEEP_S]:
            del self.early[key]  # a request this gateway never saw (e.g. before a restart)

    def _take(self, rid: str, rec) -> None:
        self.tokens[rid].append(int(rec["token_id"]))
        if int(rec["flags"]) & FLAG_ERROR:
            self._forget(rid)
            self.ctx.fail(rid, "decision reported a generation error")
        elif int(rec["flags"]) & FLAG_LAST:
            toks = self._forget(rid)
            self.ctx.finish(rid, n_tokens=len(toks), detail=json.dumps(toks))

    def _forget(self, rid: str) -> list[int]:
        self.by_key.pop(request_key(rid), None)
        return self.tokens.pop(rid, [])

    def close(self) -> None:
        self.reader.close()




class HttpGatewayStage:
    START_TIMEOUT_S = 60.0

    def __init__(self, ctx):
        import threading

        import uvicorn

        from execution.config import GatewayConfig, PrepareConfig
        from execution.server import build_gateway_app
        from runtime.compute import ENV_GATEWAY, resolve_http, resolve_model_dir

        self.ctx = ctx
        p = {**ctx.params, **json.loads(os.environ.get(ENV_GATEWAY) or "{}")}
        model_dir = resolve_model_dir(ctx)
        host, port = resolve_http(ctx)
        names = p.get("served_model_names") or ["autoglm-phone-9b"]
        media = p.get("allowed_local_media_path")
        config = GatewayConfig(
            served_model_names=tuple(names), api_key=p.get("api_key") or None,
            max_images=int(p.get("max_images", 10)), max_audios=int(p.get("max_audios", 4)),
            response_cache_size=int(p.get("response_cache_size", 0)), model_root=model_dir,
            media_cores=self._media_cores(ctx, p.get("media_cores", "auto")),
            prepare=PrepareConfig(max_model_len=self._max_model_len(ctx, model_dir),
                                  content_format=str(p.get("content_format", "openai")),
                                  allowed_media_dir=Path(media) if media else None))
        audio_mode, audio_params = None, None
        for st in ctx.launch.stages.values():
            if st.module == "perception.audio.stage" and st.params.get("compute") == "model":
                audio_mode = str(st.params.get("mode", "embed"))
                audio_params = dict(st.params)
        self.app = build_gateway_app(model_dir, ctx.instance, config, audio_mode=audio_mode,
                                     audio_params=audio_params)
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host=host, port=port, log_level=str(p.get("log_level", "warning")),
            lifespan="on", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {host}:{port} "
                                   f"(port in use? see the log above)")
            time.sleep(0.05)
        bound = self.server.servers[0].sockets[0].getsockname()
        self.address = f"http://{bound[0]}:{bound[1]}"
        ctx.log(f"OpenAI API at {self.address}/v1 (model {names[0]!r}, files from {model_dir}"
                f"{', audio ' + audio_mode if audio_mode else ''})")
        cores = config.media_cores
        ctx.log(f"images and audio decoded on cores {format_cores(cores)}"
                if cores else "images and audio decoded on the gateway's own core")

    @staticmethod
    def _media_cores(ctx, value) -> tuple[int, ...]:
        """params.media_cores: "auto" (the cores no stage is pinned to), "none", or cores
        ("2-7" or a list)."""
        if value == "auto":
            return tuple(ctx.spare_cores)
        if value in ("none", None, []):
            return ()
        try:
            return tuple(parse_cores(value) if isinstance(value, str)
                         else sorted({int(c) for c in value}))
        except (TypeError, ValueError):
            raise RuntimeError(f"params.media_cores = {value!r}: give \"auto\", \"none\", a "
                               f"list of cores or a string like \"2-7\"") from None

    @staticmethod
    def _max_model_len(ctx, model_dir) -> int:
        if ctx.params.get("max_model_len"):
            return int(ctx.params["max_model_len"])
        for st in ctx.launch.stages.values():
            if st.module == "decision.stage" and st.params.get("max_model_len"):
                return int(st.params["max_model_len"])
        from modelcore.config import ModelConfig
        return int(ModelConfig.from_dir(model_dir).text.max_position_embeddings)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def make_stage(ctx):
    from runtime.compute import compute_kind

    if compute_kind(ctx) == "model":
        return HttpGatewayStage(ctx)
    return MinimalGatewayStage(ctx)
