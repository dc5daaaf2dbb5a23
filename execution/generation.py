"""One request's output path: token events -> text deltas (stop strings, reasoning split,
reasoning budget), independent of HTTP. The app turns the deltas into SSE chunks or one body.

Order of the steps, and why: detokenise (whole characters only) -> stop strings on the raw text
(a stop string is matched on what the model wrote, as in vLLM, whether it falls in the
reasoning or the answer) -> reasoning split (only when the client asked for it, or to count
reasoning steps).

Reasoning budget (``max_reasoning_steps``): when the step counter reaches the limit while the
model is still thinking, the gateway closes the block by making `close_ids` (the ids of
"</think>") part of the output:
- if the pipeline client supports injection, it asks the engine to append them to the running
  sequence (they come back as ordinary token events);
- otherwise it cancels the request and submits a continuation whose prompt is the original
  prompt + every id generated so far + `close_ids`, with max_tokens reduced by what was already
  produced; the gateway emits `close_ids`' text itself. Same media, same sampling.
Either way the model's context equals the text the client sees, and completion_tokens counts
the injected ids. Tokens generated between the decision and the injection are kept (never
silently dropped), so the budget may be exceeded by the few tokens already in flight.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Sequence

from .detokenize import IncrementalDetokenizer, StopStringMatcher
from .pipeline_client import (PipelineClient, PipelineError, PreparedRequest, TokenEvent,
                              TokenLogprob)
from .reasoning import ReasoningSplitter, ReasoningStepCounter


@dataclass(frozen=True)
class OutputOptions:
    stop: tuple[str, ...] = ()
    return_reasoning: bool = False
    start_in_reasoning: bool = False  # the prompt ends inside <think>
    max_reasoning_steps: int | None = None
    close_reasoning_ids: tuple[int, ...] = ()  # ids of "</think>"
    skip_ids: frozenset[int] = frozenset()  # special ids never shown
    context_ids: tuple[int, ...] = ()  # last prompt ids, detokeniser context


@dataclass
class OutputDelta:
    content: str = ""  # raw text by default; the answer only when return_reasoning
    reasoning: str = ""  # only when return_reasoning
    logprobs: list[TokenLogprob] = field(default_factory=list)
    num_new_tokens: int = 0
    finish_reason: str | None = None  # "stop" | "length" on the last delta

    @property
    def empty(self) -> bool:
        return not (self.content or self.reasoning or self.logprobs or self.finish_reason)


@dataclass
class GenerationTotals:
    """Filled while the deltas are produced; read after the iterator ends."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    finish_reason: str | None = None
    reasoning_steps: int = 0
    forced_reasoning_close: bool = False
    scheduled_time: float = 0.0
    first_token_time: float = 0.0


_continuation_counter = itertools.count(1)


class Generation:
    """One request's output deltas. The request is submitted when this is made, so the
    pipeline starts on it while the HTTP response is being set up (that set-up, from the
    handler's return to the response's first pull, cost a text request ~0.25 ms of the
    gateway's time before its submission). Iterate for the deltas; ``aclose()`` ends it in
    every case, cancelling an unfinished request, also when it was never iterated (a client
    gone before the response started)."""

    def __init__(self, client: PipelineClient, request: PreparedRequest,
                 decode: Callable[[Sequence[int]], str], options: OutputOptions,
                 totals: GenerationTotals):
        self._client, self._request_id = client, request.request_id
        self._events = client.submit(request)
        self._deltas = generate(client, request, decode, options, totals, events=self._events)
        self._iterated = self._closed = False

    def __aiter__(self) -> "Generation":
        return self

    def __anext__(self):
        self._iterated = True
        return self._deltas.__anext__()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._iterated:
            await self._deltas.aclose()    # its own clean-up cancels what did not finish
            return
        try:
            await asyncio.shield(self._client.cancel(self._request_id))
        except Exception:
            pass
        await _aclose(self._events)


async def generate(client: PipelineClient, request: PreparedRequest,
                   decode: Callable[[Sequence[int]], str], options: OutputOptions,
                   totals: GenerationTotals, *, events: AsyncIterator[TokenEvent] | None = None
                   ) -> AsyncIterator[OutputDelta]:
    """Yield output deltas until the request finishes. Closing the iterator early (client
    disconnected) cancels the request in the pipeline. ``events``: the request's token
    events when it was already submitted (see Generation)."""
    detok = IncrementalDetokenizer(decode, options.skip_ids, options.context_ids)
    stops = StopStringMatcher(options.stop)
    split_needed = options.return_reasoning or options.max_reasoning_steps is not None
    splitter = ReasoningSplitter(options.start_in_reasoning) if split_needed else None
    counter = ReasoningStepCounter(options.max_reasoning_steps)
    can_force = bool(options.close_reasoning_ids) and options.max_reasoning_steps is not None
    totals.prompt_tokens = len(request.prompt_token_ids)
    generated: list[int] = []
    current = request
    if events is None:
        events = client.submit(current)
    finished = False
    forced = False

    def shape(text: str, final: bool) -> tuple[str, str, bool]:
        """(content, reasoning, budget_reached) for visible raw text."""
        if splitter is None:
            return text, "", False
        r, c = splitter.push(text)
        if final:
            fr, fc = splitter.flush()
            r, c = r + fr, c + fc
        counter.push(r)
        reached = counter.limit_reached and splitter.in_reasoning and not forced
        totals.reasoning_steps = counter.steps
        if options.return_reasoning:
            return c, r, reached
        return text, "", reached

    try:
        while True:
            restart = None
            async for ev in events:
                if ev.scheduled_time and not totals.scheduled_time:
                    totals.scheduled_time = ev.scheduled_time
                if ev.token_ids and not totals.first_token_time:
                    totals.first_token_time = ev.first_token_time or time.monotonic()
                if ev.num_cached_tokens is not None and totals.cached_tokens is None:
                    totals.cached_tokens = ev.num_cached_tokens
                if ev.finish_reason == "error":
                    raise PipelineError(ev.error or "the pipeline failed while generating")
                generated.extend(ev.token_ids)
                totals.completion_tokens = len(generated)
                end = ev.finish_reason is not None
                text = detok.push(ev.token_ids) + (detok.flush() if end else "")
                visible = stops.push(text)
                if stops.stopped:
                    finish = "stop"
                elif end:
                    visible += stops.flush()
                    # "cancelled" reaching us unasked means the pipeline dropped the request
                    if ev.finish_reason == "cancelled":
                        raise PipelineError("the pipeline cancelled the request")
                    finish = ev.finish_reason
                else:
                    finish = None
                content, reasoning, reached = shape(visible, final=finish is not None)
                delta = OutputDelta(content, reasoning, list(ev.logprobs or ()),
                                    len(ev.token_ids), finish)
                if finish is not None:
                    finished = True
                    totals.finish_reason = finish
                    if stops.stopped:
                        await client.cancel(current.request_id)
                    yield delta
                    return
                if reached and can_force:
                    forced = totals.forced_reasoning_close = True
                    if client.supports_injection:
                        await client.inject(current.request_id, options.close_reasoning_ids)
                    else:
                        restart = True
                        yield delta
                        break
                if not delta.empty:
                    yield delta
            else:
                if not finished:
                    raise PipelineError("the pipeline's token stream ended without a finish reason")
            if not restart:
                return
            # Stop + continuation: cancel, emit the closing ids ourselves, resubmit.
            await client.cancel(current.request_id)
            await _aclose(events)
            close = options.close_reasoning_ids
            generated.extend(close)
            totals.completion_tokens = len(generated)
            remaining = request.sampling.max_tokens - len(generated)
            text = stops.push(detok.push(close))
            content, reasoning, _ = shape(text, final=False)
            if stops.stopped or remaining <= 0:
                finished = True
                totals.finish_reason = "stop" if stops.stopped else "length"
                tail = "" if stops.stopped else stops.push(detok.flush()) + stops.flush()
                c2, r2, _ = shape(tail, final=True)
                yield OutputDelta(content + c2, reasoning + r2, [], len(close),
                                  totals.finish_reason)
                return
            yield OutputDelta(content, reasoning, [], len(close))
            current = request.continued(
                f"{request.request_id}-c{next(_continuation_counter)}",
                tuple(generated), remaining)
            events = client.submit(current)
    finally:
        if not finished:
            # Client went away (generator closed / task cancelled) or an error: free the slot.
            try:
                await asyncio.shield(client.cancel(current.request_id))
            except Exception:
                pass
        await _aclose(events)


async def _aclose(it) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            pass

