"""The ASGI app: POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics.

Layers, each in its own module: openai_schema (parse + validate) -> prepare (media, prompt,
tokens; in a worker thread) -> response_cache (optional) -> generation (token events -> text
deltas) -> streaming (SSE chunks / JSON body); metrics observed along the way. The pipeline is
reached only through a `PipelineClient`.

A client that disconnects cancels its request in the engine: both the streaming and the
non-streaming path watch the ASGI receive channel for ``http.disconnect`` while generating
(waiting for the next send to fail would leave a long prefill running for nobody), and
closing the generation iterator calls `PipelineClient.cancel`.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
from typing import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .config import GatewayConfig
from .errors import (APIError, body_too_large, invalid, model_not_found, server_error,
                     unauthorized)
from .generation import Generation, GenerationTotals, OutputDelta
from .media_workers import MediaWorkers
from .metrics import CONTENT_TYPE, GatewayMetrics
from .openai_schema import SchemaLimits, parse_chat_request, parse_json_body
from .pipeline_client import PipelineClient, PipelineError
from .prepare import RequestPreparer, decode_ids_fn, token_text_fn
from .response_cache import CachedResponse, ResponseCache, cache_key
from .streaming import DONE, ChunkBuilder, completion_body, logprobs_dict, usage_dict

log = logging.getLogger("autoglm.gateway")


def _trace_prepare(client, request_id: str, t_arrival: float, t_prepare: float,
                   t_prepared: float) -> None:
    """gateway.receive (arrival .. prepare starts) and gateway.media_decode (prepare) spans,
    when the pipeline client carries a tracer (profiler.emit.SpanEmitter; it bundles, so
    this costs the request no DDS write)."""
    tracer = getattr(client, "tracer", None)
    if tracer is not None:
        tracer.emit("gateway.receive", request_id, int(t_arrival * 1e9), int(t_prepare * 1e9))
        tracer.emit("gateway.media_decode", request_id, int(t_prepare * 1e9),
                    int(t_prepared * 1e9))


class _Traced:
    """An ASGI response that leaves gateway.response_sent once its last byte was handed to
    the server (the whole JSON body, or the last SSE event), not when the handler returns."""

    def __init__(self, response, tracer, request_id: str):
        self.response, self.tracer, self.request_id = response, tracer, request_id

    async def __call__(self, scope, receive, send) -> None:
        state = {"last": 0, "done": False, "end": 0}

        async def traced_send(message):
            if message["type"] == "http.response.body":
                if message.get("body") or not state["last"]:
                    state["last"] = time.monotonic_ns()  # start of the last write with data
                await send(message)
                if not message.get("more_body"):
                    state["done"], state["end"] = True, time.monotonic_ns()
            else:
                await send(message)

        try:
            await self.response(scope, receive, traced_send)
        finally:
            if state["done"]:
                # From the start of the last write (the last event or the whole body) to its
                # end.
                self.tracer.emit("gateway.response_sent", self.request_id, state["last"],
                                 state["end"],
                                 status=getattr(self.response, "status_code", 200))
            self.tracer.flush()  # the response is complete: this request's spans go out


def _traced(response, client, request_id: str):
    tracer = getattr(client, "tracer", None)
    return response if tracer is None else _Traced(response, tracer, request_id)


# X-Request-Id (as vLLM reads it): the client names its request, so it can find the request's
# trace spans (`autoglm profile --request ID`) and logs. The id travels in shm records and DDS
# keys, hence the small alphabet.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _client_request_id(request: Request) -> str | None:
    value = request.headers.get("x-request-id")
    if value is None:
        return None
    if not _REQUEST_ID_RE.fullmatch(value):
        raise invalid("X-Request-Id must be 1-128 characters of A-Z a-z 0-9 . _ : -, got "
                      f"{value[:140]!r}", param="X-Request-Id")
    return value


def _token_id_text(token_id: int) -> str:
    return f"token_id:{token_id}"


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.to_body(), status_code=err.status)


class Gateway:
    def __init__(self, config: GatewayConfig, client: PipelineClient, preparer: RequestPreparer):
        self.config = config
        self.client = client
        self.preparer = preparer
        self.metrics = GatewayMetrics(config.served_name, client.stats)
        self.cache = ResponseCache(config.response_cache_size) if config.response_cache_size else None
        self.limits = SchemaLimits(config.served_model_names, config.max_images,
                                   config.max_audios)
        self._decode = decode_ids_fn(preparer.tok)
        self._token_text = token_text_fn(preparer.tok)
        self.media = MediaWorkers(config.media_cores) if config.media_cores else None
        self.created = int(time.time())

    def close(self) -> None:
        if self.media is not None:
            self.media.close()

    # --- plumbing ---------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        if not self.config.api_key:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.config.api_key.encode())

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise body_too_large(int(declared), limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # chunked upload without a length: stop reading at the limit
                raise body_too_large(None, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    # --- endpoints --------------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        t_arrival = time.monotonic()
        if not self._authorized(request):
            return error_response(unauthorized())
        try:
            try:
                raw = await self._read_body(request)
            except ClientDisconnect:   # gone while sending the body: no one to answer
                return Response(status_code=499)
            body = parse_json_body(raw)
            chat = parse_chat_request(body, self.limits)
            request_id = _client_request_id(request)
            t0 = time.monotonic()
            if chat.has_media:
                prepare = self.media.run if self.media is not None else run_in_threadpool
                prepared = await prepare(self.preparer.prepare, chat, request_id)
            else:
                # Text only: rendering and tokenising take ~0.1 ms, less than the hop to a
                # worker thread and back (0.3-1 ms on a busy host).
                prepared = self.preparer.prepare(chat, request_id)
            t1 = time.monotonic()
        except APIError as err:
            return error_response(err)
        req, options = prepared.request, prepared.options
        completion_id = req.request_id
        model = self.config.served_name
        key = None
        if self.cache is not None and chat.is_deterministic():
            key = cache_key(req.prompt_token_ids, [im.frame for im in req.images]
                            + [a.pcm for a in req.audios], req.sampling, options)
            hit = self.cache.get(key)
            self.metrics.cache_lookup(hit is not None)
            if hit is not None:
                self._prepared(req.request_id, t_arrival, t0, t1)
                return _traced(self._from_cache(chat, completion_id, hit), self.client,
                               completion_id)

        if request_id is not None and self.client.in_flight(request_id):
            # A request's events, and its cancellation, go by its id. Checked here, with no
            # await before the submission, so two requests named alike cannot both pass.
            return error_response(invalid(
                f"X-Request-Id {request_id!r} names a request still in progress: ids must be "
                "unique among the requests in flight", param="X-Request-Id"))
        totals = GenerationTotals()
        # Submitted here: the pipeline works on it while the response is set up.
        generation = Generation(self.client, req, self._decode, options, totals)
        self._prepared(req.request_id, t_arrival, t0, t1)
        deltas = self._tracked(generation, totals, t_arrival, req.arrival_time)
        # How logprobs name tokens: their text, or "token_id:N" (vLLM's return_tokens_as_token_ids).
        lp_text = None if not chat.logprobs else (
            _token_id_text if chat.return_tokens_as_token_ids else self._token_text)
        if chat.stream:
            builder = ChunkBuilder(completion_id, model, chat.include_usage, chat.return_reasoning)
            return _traced(SSEResponse(self._sse(builder, deltas, totals, lp_text,
                                                 chat.top_logprobs, completion_id),
                                       also_close=generation),
                           self.client, completion_id)
        try:
            result = await _until_disconnect(request, self._collect(deltas, lp_text,
                                                                   chat.top_logprobs))
        except PipelineError as exc:
            return _traced(error_response(server_error(str(exc), 503 if exc.retryable else 500)),
                           self.client, completion_id)
        finally:
            await generation.aclose()   # a no-op when it ran to its end
        if result is None:  # client gone; generation already cancelled
            return Response(status_code=499)
        content, reasoning, logprobs = result
        usage = usage_dict(totals.prompt_tokens, totals.completion_tokens, totals.cached_tokens)
        if key is not None:
            self.cache.put(key, CachedResponse(content, reasoning, totals.finish_reason or "stop",
                                               totals.prompt_tokens, totals.completion_tokens,
                                               logprobs))
        return _traced(JSONResponse(completion_body(
            completion_id, model, content, reasoning if chat.return_reasoning else None,
            totals.finish_reason, usage, logprobs)), self.client, completion_id)

    def _prepared(self, request_id: str, t_arrival: float, t0: float, t1: float) -> None:
        """The preparation's metric and spans, said once the request is on its way."""
        self.metrics.observe_stage("gateway_prepare", t1 - t0)
        _trace_prepare(self.client, request_id, t_arrival, t0, t1)

    async def _collect(self, deltas: AsyncIterator[OutputDelta], lp_text, top_n: int):
        content, reasoning, lps = [], [], []
        async for d in deltas:
            content.append(d.content)
            reasoning.append(d.reasoning)
            lps.extend(d.logprobs)
        lp = logprobs_dict(lps, lp_text, top_n) if lp_text else None
        return "".join(content), "".join(reasoning), lp

    async def _sse(self, builder: ChunkBuilder, deltas: AsyncIterator[OutputDelta],
                   totals: GenerationTotals, lp_text, top_n: int,
                   request_id: str = "") -> AsyncIterator[bytes]:
        tracer = getattr(self.client, "tracer", None)
        # The assistant-role chunk goes out with the first delta, in one write: written
        # first, it delayed the request's submission (which happens on the first delta's
        # way) by a socket write.
        head, ended = builder.first(), False
        try:
            async for d in deltas:
                lp = logprobs_dict(d.logprobs, lp_text, top_n) if (
                    lp_text and d.logprobs) else None
                chunk = builder.delta(d.content, d.reasoning, d.finish_reason, lp)
                if d.finish_reason is not None:
                    # The closing events go out with the last delta, in one write, before
                    # the iterators below unwind: their clean-up (the request's metrics, its
                    # token queue) runs once the client has its answer.
                    ended = True
                    yield FinalChunk(self._closing(builder, head + (chunk or b""), totals))
                    if tracer is not None and chunk is not None:
                        tracer.mark("gateway.first_chunk", request_id)
                elif chunk is not None:
                    yield head + chunk  # resumes once the server took the chunk
                    head = b""
                    if tracer is not None:
                        tracer.mark("gateway.first_chunk", request_id)
                        tracer = None
        except PipelineError as exc:
            if not ended:   # after the closing events, the body is over: nothing to add
                yield FinalChunk(head + builder.error(str(exc)) + DONE)
            return
        if not ended:   # the deltas stopped without a finish reason
            yield FinalChunk(self._closing(builder, head, totals))

    @staticmethod
    def _closing(builder: ChunkBuilder, tail: bytes, totals: GenerationTotals) -> bytes:
        """The stream's last bytes: ``tail`` (pending events), the usage chunk when asked
        for, ``[DONE]``."""
        if builder.include_usage:
            tail += builder.usage(usage_dict(totals.prompt_tokens, totals.completion_tokens,
                                             totals.cached_tokens))
        return tail + DONE

    async def _tracked(self, deltas: AsyncIterator[OutputDelta], totals: GenerationTotals,
                       t_arrival: float, t_submit: float) -> AsyncIterator[OutputDelta]:
        """Pass deltas through, observing the request's latency metrics."""
        m = self.metrics
        m.in_flight.labels(m.model_name).inc()
        last = None
        outcome = "abort"
        try:
            async for d in deltas:
                now = time.monotonic()
                if d.num_new_tokens:
                    if last is None:
                        m.observe_ttft(now - t_arrival)
                    else:
                        gap = (now - last) / d.num_new_tokens
                        for _ in range(d.num_new_tokens):
                            m.observe_itl(gap)
                    last = now
                yield d
            outcome = totals.finish_reason or "stop"
        except PipelineError:
            outcome = "error"
            raise
        finally:
            m.in_flight.labels(m.model_name).dec()
            m.finished(outcome)
            m.count_tokens(totals.prompt_tokens, totals.completion_tokens)
            m.observe_e2e(time.monotonic() - t_arrival)
            if totals.scheduled_time:
                m.observe_queue(max(0.0, totals.scheduled_time - t_submit))
            await deltas.aclose()

    def _from_cache(self, chat, completion_id: str, hit: CachedResponse) -> Response:
        model = self.config.served_name
        usage = usage_dict(hit.prompt_tokens, hit.completion_tokens, hit.prompt_tokens)
        if not chat.stream:
            return JSONResponse(completion_body(
                completion_id, model, hit.content,
                hit.reasoning if chat.return_reasoning else None, hit.finish_reason, usage,
                hit.logprobs if chat.logprobs else None))
        builder = ChunkBuilder(completion_id, model, chat.include_usage, chat.return_reasoning)

        async def chunks():
            yield builder.first()
            yield builder.delta(hit.content, hit.reasoning, hit.finish_reason,
                                hit.logprobs if chat.logprobs else None)
            if chat.include_usage:
                yield builder.usage(usage)
            yield DONE
        return SSEResponse(chunks())

    async def models(self, request: Request) -> Response:
        if not self._authorized(request):
            return error_response(unauthorized())
        return JSONResponse({"object": "list", "data": [
            self._model_card(name) for name in self.config.served_model_names]})

    async def model(self, request: Request) -> Response:
        """GET /v1/models/{model}: one served model (the SDK's models.retrieve)."""
        if not self._authorized(request):
            return error_response(unauthorized())
        name = request.path_params["model"]
        if name not in self.config.served_model_names:
            return error_response(model_not_found(name))
        return JSONResponse(self._model_card(name))

    def _model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self.created,
                "owned_by": "autoglm-pipeline", "root": self.config.model_root or name,
                "parent": None, "max_model_len": self.config.prepare.max_model_len}

    async def health(self, request: Request) -> Response:
        h = await self.client.health()
        body = {"status": "ok" if h.ready else "unavailable", "detail": h.detail,
                "stages": h.stages}
        return JSONResponse(body, status_code=200 if h.ready else 503)

    async def metrics_endpoint(self, request: Request) -> Response:
        data = await run_in_threadpool(self.metrics.exposition)
        return Response(data, media_type=CONTENT_TYPE)


class FinalChunk(bytes):
    """The last bytes of an event stream: SSEResponse sends them as the end of the body, in
    the same write (not followed by an empty one)."""


class SSEResponse:
    """An event-stream response that cancels its source when the client disconnects.

    Starlette's StreamingResponse notices a disconnect only when a write fails (ASGI spec
    2.4+), i.e. possibly after a long prefill; here a watcher task reads ``http.disconnect``
    and cancels the pump at once, and the source iterator is always closed (which cancels
    the request in the pipeline)."""

    def __init__(self, chunks: AsyncIterator[bytes], also_close=None):
        self.chunks = chunks
        # What ``chunks`` draws from: closed too, also when ``chunks`` was never pulled (a
        # generator never started does not run its clean-up when closed).
        self.also_close = also_close

    async def __call__(self, scope, receive, send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]}

        async def pump():
            # The headers at once, while the pipeline works on the request, as vLLM does: a
            # client sets up its response when they arrive (the openai SDK returns the stream
            # then); sent with the first chunk, that set-up lay on the first token's way, 0.6
            # ms of it on the 2-core VM, for text and screenshots alike
            # (benchmarks/results/serve-cpu-headers-first-ab.json).
            await send(start)
            ended = False
            async for chunk in self.chunks:
                ended = isinstance(chunk, FinalChunk)  # the source's last (it ends after it)
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await _until_disconnect_receive(receive, pump())
        except OSError:
            pass  # the connection broke while writing: same as a disconnect
        finally:
            await self.chunks.aclose()
            if self.also_close is not None:
                await self.also_close.aclose()


async def _until_disconnect_receive(receive: Callable[[], Awaitable[dict]], work: Awaitable):
    """Run `work`; if the client disconnects first, cancel it and return None."""
    async def watch():
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return

    work_t = asyncio.ensure_future(work)
    watch_t = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({work_t, watch_t}, return_when=asyncio.FIRST_COMPLETED)
        if work_t in done:
            return work_t.result()
        work_t.cancel()
        try:
            await work_t
        except (asyncio.CancelledError, Exception):
            pass
        return None
    finally:
        for t in (work_t, watch_t):
            if not t.done():
                t.cancel()
        await asyncio.gather(work_t, watch_t, return_exceptions=True)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own refusals (no such route, wrong method) in OpenAI's error format, as
    every other error: the SDKs show ``message``."""
    what = {404: f"Invalid URL ({request.method} {request.url.path}): this server serves "
                 "/v1/chat/completions, /v1/models, /health and /metrics.",
            405: f"{request.method} is not allowed on {request.url.path}."}.get(
        exc.status_code, exc.detail)
    return JSONResponse(APIError(what, status=exc.status_code).to_body(),
                        status_code=exc.status_code, headers=exc.headers)


async def _until_disconnect(request: Request, work: Awaitable):
    return await _until_disconnect_receive(request.receive, work)


def build_app(config: GatewayConfig, client: PipelineClient, preparer: RequestPreparer) -> Starlette:
    gw = Gateway(config, client, preparer)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await client.start()
        try:
            yield
        finally:
            gw.close()
            await client.close()

    app = Starlette(routes=[
        Route("/v1/chat/completions", gw.chat_completions, methods=["POST"]),
        Route("/v1/models", gw.models, methods=["GET"]),
        Route("/v1/models/{model:path}", gw.model, methods=["GET"]),
        Route("/health", gw.health, methods=["GET"]),
        Route("/metrics", gw.metrics_endpoint, methods=["GET"]),
    ], lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.gateway = gw
    return app
