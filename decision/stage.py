"""The decision stage's module (the launch spec's `decision.stage`): `make_stage` builds the
model compute (params.compute = "model": decision.model_stage.ModelDecisionStage, the GLM
decoder behind the continuous-batching engine) or the minimal stand-in of the plumbing tests
(params.compute = "minimal", below), which imports neither torch nor the engine."""
from __future__ import annotations

import time

import numpy as np

from runtime.compute import request_key, slot_ref
from runtime.records import FLAG_LAST, TOKEN_RECORD
from runtime.stage import config_int


class MinimalDecisionStage:
    def __init__(self, ctx):
        self.ctx = ctx
        self.max_tokens = int(ctx.params.get("max_tokens", 8))
        self.vocab = int(ctx.params.get("vocab", 32000))
        self.out_channel = ctx.stage.outputs[0] if ctx.stage.outputs else "tokens"
        self._writer = None
        self.waiting: dict[str, dict] = {}       # request id -> {"req", "got": {modality: ref}}
        self.early: dict[str, dict] = {}         # embeddings announced before the request arrived
        self.early_at: dict[str, float] = {}

    def _prune_early(self, max_age_s: float = 30.0) -> None:
        """Embeddings of a request that never came: give the slots back."""
        now = time.monotonic()
        for rid in [r for r, t in self.early_at.items() if now - t > max_age_s]:
            del self.early_at[rid]
            self._release(self.early.pop(rid, {}))

    def writer(self):
        if self._writer is None:
            self._writer = self.ctx.ring(self.out_channel).writer()
        return self._writer

    # The config names it takes, with their types: the runtime refuses any other value.
    config_params = {"decision.max_tokens": config_int(minimum=1)}

    def on_config(self, name: str, value) -> None:
        if name == "decision.max_tokens":
            self.max_tokens = int(value)

    def on_request(self, req) -> None:
        rid = req.request_id
        self.ctx.begin(rid)
        self.early_at.pop(rid, None)
        self.waiting[rid] = {"req": req, "got": self.early.pop(rid, {})}
        self._maybe_generate(rid)

    def on_event(self, ev) -> None:
        if ev.kind == "modality_ready":
            entry = self.waiting.get(ev.request_id)
            if entry is None:
                self._prune_early()
                self.early_at.setdefault(ev.request_id, time.monotonic())
            got = entry["got"] if entry else self.early.setdefault(ev.request_id, {})
            got[ev.modality] = ev.output
            if entry:
                self._maybe_generate(ev.request_id)
        elif ev.kind == "error" and ev.request_id in self.waiting:
            # An upstream stage failed this request: give back what arrived and drop it.
            entry = self.waiting.pop(ev.request_id)
            self._release(entry["got"])
            self.ctx.finish(ev.request_id, kind="cancelled", detail=f"upstream error: {ev.detail}")

    def on_cancel(self, c) -> None:
        entry = self.waiting.pop(c.request_id, None)
        if entry:
            self._release(entry["got"])
            self.ctx.finish(c.request_id, kind="cancelled", detail=c.reason)

    def _release(self, got: dict) -> None:
        for ref in got.values():
            try:
                self.ctx.pool(ref.channel).release(slot_ref(ref))
            except Exception:
                pass  # already reclaimed

    def _maybe_generate(self, rid: str) -> None:
        entry = self.waiting[rid]
        req = entry["req"]
        if not set(req.modalities) <= set(entry["got"]):
            return
        del self.waiting[rid]
        try:
            feats = []
            for modality in req.modalities:
                ref = entry["got"].pop(modality)
                # view() releases our share on exit: the slot goes back to the pool.
                with self.ctx.pool(ref.channel).view(slot_ref(ref)) as emb:
                    feats.append(np.asarray(emb, dtype=np.float64).mean(axis=0))
            n = max(1, min(self.max_tokens, int(req.sampling.max_new_tokens) or self.max_tokens))
            tokens = self.generate(feats, n)
        except Exception as e:
            self._release(entry["got"])
            self.ctx.fail(rid, f"decision: {e}")
            return
        recs = np.zeros(n, dtype=TOKEN_RECORD)
        recs["request_key"] = request_key(rid)
        recs["t_mono_ns"] = time.monotonic_ns()
        recs["index"] = np.arange(n)
        recs["token_id"] = tokens
        recs["flags"][-1] = FLAG_LAST
        self.writer().write_many(recs)
        self.ctx.finish(rid, n_tokens=n)

    def generate(self, feats: list[np.ndarray], n: int) -> np.ndarray:
        seed = 0.0 if not feats else float(sum(np.abs(f).sum() for f in feats))
        base = int(seed * 1000) % self.vocab
        return (base + 7919 * np.arange(n)) % self.vocab

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def make_stage(ctx):
    from runtime.compute import compute_kind

    if compute_kind(ctx) == "model":
        from decision.model_stage import ModelDecisionStage
        return ModelDecisionStage(ctx)
    return MinimalDecisionStage(ctx)
