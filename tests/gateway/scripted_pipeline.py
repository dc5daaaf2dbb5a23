"""A scripted stand-in for the pipeline behind `PipelineClient`, for tests of the gateway's own
layers (HTTP, SSE, cancellation, reasoning budget) without GPU stages. It answers every request
with the token ids of a fixed text, one event per token, then the tokenizer's stop token. It
records what it was asked (submissions, cancels, injections) so tests can assert on them.
End-to-end tests against the launched pipeline use the real client instead."""
from __future__ import annotations

import asyncio

from execution.pipeline_client import (PipelineHealth, PipelineStats, PreparedRequest,
                                       TokenEvent, TokenLogprob)
from modelcore.tokenizer import END_THINK


class ScriptedPipeline:
    def __init__(self, tok, text: str, *, after_close: str = "\n<answer>ok</answer>",
                 delay: float = 0.0, supports_injection: bool = False, fail_after: int | None = None):
        self.tok = tok
        self.text = text
        self.after_close = after_close
        self.delay = delay
        self.supports_injection = supports_injection
        self.fail_after = fail_after
        self.submitted: list[PreparedRequest] = []
        self.cancelled: list[str] = []
        self.injected: list[tuple[str, tuple[int, ...]]] = []
        self._pending: dict[str, list[int]] = {}
        self._live: set[str] = set()
        self.started = self.closed = False
        self.close_ids = tuple(tok.encode(END_THINK))

    async def start(self):
        self.started = True

    async def close(self):
        self.closed = True

    def submit(self, req: PreparedRequest):
        self.submitted.append(req)
        self._live.add(req.request_id)
        return self._run(req)

    async def _run(self, req: PreparedRequest):
        try:
            async for event in self._events(req):
                yield event
        finally:
            self._live.discard(req.request_id)

    async def _events(self, req: PreparedRequest):
        rid = req.request_id
        cont = req.prompt_token_ids[-len(self.close_ids):] == self.close_ids
        script = list(self.tok.encode(self.after_close if cont else self.text))
        eos = self.tok.eos_token_ids[0]
        n = 0
        t_sched = asyncio.get_running_loop().time()
        while True:
            if rid in self.cancelled:
                return
            if self.delay:
                await asyncio.sleep(self.delay)
            else:
                await asyncio.sleep(0)
            if self.fail_after is not None and n >= self.fail_after:
                yield TokenEvent(finish_reason="error", error="decision stage crashed (scripted)")
                return
            pending = self._pending.get(rid)
            if pending:
                tid = pending.pop(0)
                if not pending:  # the injected block is in: the model now answers
                    script = list(self.tok.encode(self.after_close))
            elif script:
                tid = script.pop(0)
            else:
                tid = eos
            n += 1
            finish = None
            if tid == eos:
                finish = "stop"
            elif n >= req.sampling.max_tokens:
                finish = "length"
            lp = None
            if req.sampling.logprobs:
                lp = (TokenLogprob(tid, -0.25, ((tid, -0.25), (eos, -2.0))[:max(1, req.sampling.top_logprobs)]),)
            yield TokenEvent((tid,), lp, finish, scheduled_time=t_sched,
                             num_cached_tokens=0 if n == 1 else None)
            if finish:
                return

    async def cancel(self, request_id: str):
        self.cancelled.append(request_id)

    def in_flight(self, request_id: str) -> bool:
        return request_id in self._live

    async def inject(self, request_id: str, token_ids):
        self.injected.append((request_id, tuple(token_ids)))
        self._pending.setdefault(request_id, []).extend(token_ids)

    async def health(self):
        return PipelineHealth(True, "scripted")

    def stats(self):
        return PipelineStats(num_requests_running=1, num_requests_waiting=2, kv_cache_usage=0.25,
                             prefix_cache_queries=100, prefix_cache_hits=40,
                             stage_latencies={"vision": [0.01, 0.02]})
