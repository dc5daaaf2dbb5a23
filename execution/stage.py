"""Minimal execution (gateway) stage compute: the egress half.

It reads token records from the `tokens` ring (woken by its doorbell), collects them per
request and, at a request's last token, publishes a `done` event carrying the token ids (JSON
in `detail`). Ingress (HTTP, chat template, media into shm) is not here yet: until it is,
`launch.driver.submit()` plays the client side. The HTTP host/port of the spec reach this stage
as `ctx.http` for when the OpenAI API lands.
"""
from __future__ import annotations

import json
import time

from runtime.compute import request_key
from runtime.records import FLAG_ERROR, FLAG_LAST

EARLY_KEEP_S = 10.0


class GatewayStage:
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
        """Wait up to `timeout` s on the tokens doorbell and hand out what arrived."""
        batch = self.reader.read(timeout=timeout)
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


def make_stage(ctx):
    return GatewayStage(ctx)
