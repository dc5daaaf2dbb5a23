"""The real PipelineClient: media and prompt ids into shm, the request over DDS, tokens from the
shm tokens ring (asyncio doorbell).

Per request:
1. media into slot pools: each image's resized uint8 [H, W, 3] frame into `frames`, each
   clip's float32 PCM into `pcm` (pool.put blocks while the pool is full, so it runs in a
   worker thread); a prompt longer than control.messages.INLINE_PROMPT_TOKENS into the
   `prompts` pool (shorter ones travel inside the Request, ``prompt_ids``);
2. a `control.messages.Request` on the request topic (and on the topic of each modality it
   carries, control.requests): modalities/media in prompt order, sampling (the typed fields
   control defines) and, in ``extra`` (msgpack), the fields it does not type yet:
   presence/frequency penalties, logprobs, top_logprobs; a text-only request is published
   from the event loop, one with media from a worker thread;
3. token records (runtime.records.TOKEN_RECORD) read from the `tokens` ring in the event
   loop's selector callback (RingReader.watch) and routed by request key to the request's
   queue; FLAG_LAST ends it, FLAG_ERROR fails it;
4. a stage's `error` event for the request fails it too (e.g. the vision stage refused the
   frame), so a request never waits for tokens that will not come.

The finish reason is the engine's, carried by the last record (TOKEN_RECORD.finish: stop,
length, cancelled, error); only records of a producer that leaves it unset (the minimal
stand-in stage) get it inferred: a stop token -> "stop", max_tokens reached -> "length".
Records with FLAG_LOGPROBS carry the token's logprob and its top alternatives. A record
with token_id -1 ends a request without a token (cancelled, error).

Transcribe-mode audio (`transcribe`, called by the RequestPreparer from its worker thread
before the prompt is rendered): each clip's float32 mono 16 kHz PCM goes into the `pcm` pool
(readers=1; the audio stage releases it) and a StageEvent of kind "transcribe" on the
transcribe topic (request_id = the generation request's id, output = the PCM ref, n_tokens =
clip index, detail JSON {"clip": n, "sample_rate": 16000}) asks the audio stage for its
text; the stage's `done`
event for that id (detail JSON {"clip": n, "text": ...}) resolves the clip, an `error` event
(from the stage, or from the supervisor when the stage died: code 503) fails every clip of
the request with an `AudioStageError` (status 400 when the audio was unusable, else 500/503),
and no answer within the timeout is an `AudioStageError` with status 503. The contract's
other side is perception/audio/stage.py. The generation request sent afterwards carries no
audio.

Also in ``extra``: the image grids (``image_grids``, [t, h, w] per image, which the decision
stage needs for M-RoPE before the vision stage has run) and the audio placeholder counts
(``audio_tokens``). Engine load for /metrics is read from the `engine_stats` ring when the
instance has one (the newest record wins).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import threading
import time
from collections import defaultdict, deque
from typing import AsyncIterator

import numpy as np

from control.naming import LAUNCHER_NODE
from runtime.compute import request_key, shm_ref
from runtime.records import FINISH_NAMES, FLAG_ERROR, FLAG_LAST, FLAG_LOGPROBS, TOKEN_HEAD

from .pipeline_client import (PipelineError, PipelineHealth, PipelineStats, PreparedRequest,
                              TokenEvent, TokenLogprob)

EVENT_QUEUE_END = object()
STAGE_LATENCY_WINDOW = 4096
ERROR_DETAIL_WAIT_S = 0.5
TRANSCRIBE_KIND = "transcribe"   # = perception.audio.stage.TRANSCRIBE_KIND (kept import-free)
PCM_SAMPLE_RATE = 16000          # the pcm pool's contract


class AudioStageError(PipelineError):
    """The audio stage did not give a transcript: `status` is the HTTP status the gateway
    answers with (400: the audio is unusable; 500: the stage failed; 503: it died, is not
    ready or did not answer in time); `clip` is the clip's index when known."""

    def __init__(self, message: str, status: int, clip: int | None = None):
        super().__init__(message, retryable=status == 503)
        self.status = status
        self.clip = clip


def _read_token_records(records: np.ndarray):
    """One request's new token records -> (token ids, their flags or-ed, the last record's
    finish code, the first token's t_mono_ns, logprobs or None). One record without
    logprobs (the per-token case) is unpacked with struct: numpy field access costs a few
    microseconds per call, on the path of every streamed token."""
    if len(records) == 1:
        _, t_ns, _, token, flags, finish, _, _, _ = TOKEN_HEAD.unpack_from(records)
        if not flags & FLAG_LOGPROBS:
            return ((token,) if token >= 0 else ()), flags, finish, t_ns, None
    if not len(records):
        return (), 0, 0, 0, None
    flags = int(np.bitwise_or.reduce(records["flags"]))
    with_token = records[records["token_id"] >= 0]
    ids = tuple(int(t) for t in with_token["token_id"])
    logprobs = None
    if flags & FLAG_LOGPROBS:
        logprobs = tuple(
            TokenLogprob(int(r["token_id"]), float(r["logprob"]),
                         tuple((int(i), float(v)) for i, v in
                               zip(r["top_ids"][:r["n_top"]], r["top_logprobs"][:r["n_top"]])))
            for r in with_token)
    first_ns = int(with_token[0]["t_mono_ns"]) if len(ids) else 0
    return ids, flags, int(records[-1]["finish"]), first_ns, logprobs


def _failure(ev) -> str:
    """What an error event says to the client. The launcher's own (it fails the requests a
    dead stage held) name the stage already: "stage 'decision' died (...) while ..."."""
    if ev.source == LAUNCHER_NODE:
        return ev.detail
    return f"stage {ev.source} failed the request: {ev.detail}"


class ShmPipelineClient:
    supports_injection = False

    def __init__(self, instance: str, *, node_name: str | None = None, frames: str = "frames",
                 pcm: str = "pcm", prompts: str = "prompts", tokens: str = "tokens",
                 put_timeout: float = 10.0):
        self.instance = instance
        self.node_name = node_name or f"gateway-http-{os.getpid()}"
        self.channels = {"frames": frames, "pcm": pcm, "prompts": prompts, "tokens": tokens}
        self.put_timeout = put_timeout
        self._plane = None
        self._pools: dict = {}
        self._queues: dict[int, asyncio.Queue] = {}  # request key -> its events
        self._by_id: dict[str, int] = {}
        self._media_lock = threading.Lock()   # see _build_request
        # The stages a request with media still waits on (the producer of each of its
        # modalities) until that stage's done, error or cancelled event for it: a stage lost
        # meanwhile (hung, killed, restarted) never takes it, so it is failed (_pump_events).
        self._awaiting: dict[str, set[str]] = {}
        # modality -> the stage that turns it into embeddings; modality_ready events confirm.
        self._producers = {"image": "vision", "audio": "audio"}
        self._tasks: list[asyncio.Task] = []
        self._ring_reader = None
        self._stage_lat: dict[str, deque] = defaultdict(lambda: deque(maxlen=STAGE_LATENCY_WINDOW))
        self._states: dict[str, str] = {}
        self._details: dict[str, str] = {}  # stage -> its state's detail ("device cuda:0; ...")
        self._states_lock = threading.Lock()
        self.lost_records = 0
        self._stats_reader = None
        self._engine_stats = None  # newest ENGINE_STATS_RECORD
        # request id -> one future per clip, resolved by the event pump (transcribe mode)
        self._transcripts: dict[str, list[concurrent.futures.Future]] = {}

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        from control import topics as t
        from control.aio import AsyncReader
        from control.plane import ControlPlane
        from control.requests import RequestPublisher
        from profiler.emit import SpanEmitter
        from shm.ring import Ring

        # The participant is created here, in the serving process (never before a fork).
        self._plane = ControlPlane(self.instance, self.node_name)
        self._w_request = RequestPublisher(self._plane)
        self._w_cancel = self._plane.writer(t.CANCEL)
        # Created now, not on first use: the topic is volatile, so the audio stage must have
        # discovered this writer before the first transcription job is written.
        self._w_transcribe = self._plane.writer(t.TRANSCRIBE)
        # Trace spans for `autoglm profile`, bundled: written once a response is complete
        # (execution.app flushes), not one DDS write each on the request's way. On and off
        # with the process's switch: AUTOGLM_TRACE, and trace.enabled as the stage runtime
        # of this process (the gateway stage) applies it; it never read either before.
        self.tracer = SpanEmitter(self._plane, bundle=True, enabled=None)
        self._events = AsyncReader(self._plane.reader(t.STAGE_EVENT)).start()
        self._state_reader = self._plane.reader(t.STAGE_STATE)
        self._ring_reader = Ring.attach(self.instance, self.channels["tokens"]).reader(start="latest")
        try:
            self._stats_reader = Ring.attach(self.instance, "engine_stats").reader(start="latest")
        except Exception:
            self._stats_reader = None  # no engine_stats ring in this instance
        # Token records are routed from the event loop's selector callback (no task between
        # the writer's wake-up and the request's queue).
        self._ring_reader.watch(asyncio.get_running_loop(), self._route_tokens)
        self._tasks = [asyncio.create_task(self._pump_events(), name="stage-events")]

    async def wait_for_stages(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until `count` stages read the request topics (volatile: a request written
        before a stage is discovered never reaches it)."""
        return await asyncio.to_thread(self._w_request.wait_for_readers, count, timeout)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._plane is not None:
            await self._events.close()
            self._plane.close()
        if self._ring_reader is not None:
            self._ring_reader.close()
        if self._stats_reader is not None:
            self._stats_reader.close()
        for p in self._pools.values():
            p.close()

    def _pool(self, name: str):
        from shm.pool import SlotPool

        if name not in self._pools:
            self._pools[name] = SlotPool.attach(self.instance, name)
        return self._pools[name]

    def _has_pool(self, name: str) -> bool:
        try:
            self._pool(name)
            return True
        except Exception:
            return False

    # --- requests -----------------------------------------------------------------------
    def submit(self, request: PreparedRequest) -> AsyncIterator[TokenEvent]:
        """A text-only request is published before this returns (its ids travel in the
        message, or a long prompt's go into a free prompts slot): at once, with no hop to a
        worker thread and back (0.3-1 ms on a busy host). Media (a pool may make the write
        wait for a free slot) and a full prompts pool go through a worker thread on the first
        iteration, which also publishes (Cyclone writers are thread-safe). A failure is
        raised by the first iteration. ``cancel(request_id)`` forgets the request even when
        its events were never iterated."""
        key = request_key(request.request_id)
        self._queues[key] = asyncio.Queue()
        self._by_id[request.request_id] = key
        failure, published = None, False
        down = self._stages_down()
        if down:
            # A request written now would wait for a stage that is not there to read it.
            failure = PipelineError(f"the pipeline is not ready: {down}", retryable=True)
        else:
            try:
                published = self._submit_inline(request)
            except Exception as exc:  # DDS write failed, ...
                failure = self._cannot_take(exc)
        return self._run(request, key, published, failure)

    @staticmethod
    def _cannot_take(exc: Exception) -> PipelineError:
        return PipelineError(f"the pipeline cannot take the request now: {exc}", retryable=True)

    async def _run(self, req: PreparedRequest, key: int, published: bool,
                   failure: PipelineError | None) -> AsyncIterator[TokenEvent]:
        queue = self._queues.get(key)
        try:
            if failure is not None:
                raise failure
            if queue is None:   # cancelled before its events were read
                raise PipelineError("the request was cancelled")
            if not published:
                try:
                    await asyncio.to_thread(self._submit_request, req)
                except Exception as exc:  # pool full past the timeout, DDS write blocked, ...
                    raise self._cannot_take(exc) from exc
            produced = 0
            stop_ids = set(req.sampling.stop_token_ids)
            while True:
                item = await queue.get()
                if isinstance(item, PipelineError):
                    yield TokenEvent(finish_reason="error", error=str(item))
                    return
                ids, flags, finish_code, first_ns, logprobs = _read_token_records(item)
                if flags & FLAG_ERROR:
                    # The stage's error event says why; it travels over DDS, usually a moment
                    # behind the ring record.
                    detail = "the decision stage reported a generation error"
                    try:
                        nxt = await asyncio.wait_for(queue.get(), ERROR_DETAIL_WAIT_S)
                        if isinstance(nxt, PipelineError):
                            detail = str(nxt)
                    except asyncio.TimeoutError:
                        pass
                    yield TokenEvent(ids, finish_reason="error", error=detail)
                    return
                produced += len(ids)
                finish = None
                if flags & FLAG_LAST:
                    finish = FINISH_NAMES.get(finish_code)
                    if finish is None:  # a producer that does not say why (minimal stage)
                        finish = "stop" if (ids and ids[-1] in stop_ids) else (
                            "length" if produced >= req.sampling.max_tokens else "stop")
                first = first_ns / 1e9 if len(ids) and produced == len(ids) else 0.0
                yield TokenEvent(ids, logprobs, finish, first_token_time=first)
                if finish:
                    return
        finally:
            self._forget(req.request_id)

    def in_flight(self, request_id: str) -> bool:
        return request_id in self._by_id

    def _forget(self, request_id: str) -> None:
        self._awaiting.pop(request_id, None)
        key = self._by_id.pop(request_id, None)
        if key is not None:
            self._queues.pop(key, None)

    def _submit_request(self, req: PreparedRequest) -> None:
        """Put the request's media and prompt into shm and publish it (blocking)."""
        self._publish(req, wait=True)

    def _submit_inline(self, req: PreparedRequest) -> bool:
        """Publish a text-only request without waiting for anything; False (nothing
        written) when it has media or the prompts pool has no free slot now."""
        if req.images or req.audios:
            return False
        return self._publish(req, wait=False)

    def _publish(self, req: PreparedRequest, *, wait: bool) -> bool:
        """Write the request's media and prompt into shm and the Request on DDS; False where
        ``wait=False`` found no free prompts slot (nothing written). The slots of a request
        that is not published go back at once: no reader would ever take them, and a pool
        that lost a few that way refused every image after (a 503 per request, for good)."""
        written: list = []
        try:
            msg = self._build_request(req, written, wait=wait)
            if msg is None:
                return False
            if req.images or req.audios:    # before the write: its events may come at once
                self._awaiting[req.request_id] = {
                    self._producers[m] for m, media in (("image", req.images),
                                                        ("audio", req.audios)) if media}
            self._w_request.write(msg)
            return True
        except BaseException:
            self._awaiting.pop(req.request_id, None)
            for pool, ref in written:
                pool.release(ref)
            raise

    def _build_request(self, req: PreparedRequest, written: list, *, wait: bool = True):
        """The Request message, its media and prompt written into shm ((pool, ref) of each
        slot appended to `written`). With ``wait=False`` (text-only requests) None when the
        prompts pool has no free slot now."""
        from control.messages import INLINE_PROMPT_TOKENS, Request, SamplingParams, pack_extra

        t_shm = time.monotonic_ns()  # the gateway.shm_write span starts
        modalities, media = [], []
        # One request at a time fills the media pools: requests that each took part of a pool
        # and waited for the rest would hold it all between them, and all time out.
        with self._media_lock if (req.images or req.audios) else contextlib.nullcontext():
            for im in req.images:
                pool = self._pool(self.channels["frames"])
                ref = pool.put(im.frame, readers=1, timeout=self.put_timeout)
                written.append((pool, ref))
                modalities.append("image")
                media.append(shm_ref(ref, im.frame.nbytes))
            for au in req.audios:
                pcm = np.ascontiguousarray(au.pcm, dtype=np.float32)
                pool = self._pool(self.channels["pcm"])
                ref = pool.put(pcm, readers=1, timeout=self.put_timeout)
                written.append((pool, ref))
                modalities.append("audio")
                media.append(shm_ref(ref, pcm.nbytes))
        s = req.sampling
        extra = {"presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
                 "logprobs": s.logprobs, "top_logprobs": s.top_logprobs,
                 "logit_bias": [list(pair) for pair in s.logit_bias],
                 "image_grids": [list(im.grid_thw) for im in req.images],
                 "audio_tokens": [int(au.num_tokens) for au in req.audios]}
        # Only what differs from the decision stage's defaults travels: a plain text request
        # carries no msgpack to pack and unpack.
        extra = {k: v for k, v in extra.items() if v}
        ids = req.prompt_token_ids
        prompt, inline = None, []
        if len(ids) <= INLINE_PROMPT_TOKENS or not self._has_pool(self.channels["prompts"]):
            inline = list(ids)
        else:
            from shm.errors import PoolExhaustedError
            ids = np.asarray(ids, dtype=np.int32)
            pool = self._pool(self.channels["prompts"])
            try:
                ref = pool.put(ids, readers=1, timeout=self.put_timeout if wait else 0.0)
            except PoolExhaustedError:
                if wait:
                    raise
                return None
            written.append((pool, ref))
            prompt = shm_ref(ref, ids.nbytes)
        msg = Request(
            request_id=req.request_id, n_prompt_tokens=len(ids), prompt_ids=inline,
            modalities=modalities,
            media=media,
            sampling=SamplingParams(
                max_new_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                top_k=s.top_k, repetition_penalty=s.repetition_penalty,
                seed=s.seed or 0, seeded=s.seed is not None,
                stop_token_ids=list(s.stop_token_ids)),
            extra=pack_extra(extra))
        if prompt is not None:
            msg.prompt = prompt
        if getattr(self, "tracer", None) is not None:
            self.tracer.emit("gateway.shm_write", req.request_id, t_shm, n_media=len(media))
        return msg

    async def cancel(self, request_id: str) -> None:
        from control.messages import Cancel

        self._forget(request_id)   # its records, still coming, are dropped
        if self._plane is not None:
            self._w_cancel.write(Cancel(request_id=request_id, reason="gateway"))

    async def inject(self, request_id: str, token_ids) -> None:
        raise PipelineError("this pipeline cannot inject tokens; the gateway uses continuation")

    # --- pumps --------------------------------------------------------------------------
    def _route_tokens(self, batch) -> None:
        """New token records (event loop thread) into their requests' queues."""
        if batch.lost:
            self.lost_records += batch.lost
        recs = batch.records
        if len(recs) == 1:  # the common case at low load: no grouping
            q = self._queues.get(TOKEN_HEAD.unpack_from(recs)[0])
            if q is not None:
                q.put_nowait(recs)
            return
        # Grouped in Python, not with np.unique: its first call imports numpy.ma (~60 ms on
        # the H200 host), which stalled every stream the first time two requests shared a
        # step's batch.
        rows: dict[int, list[int]] = {}
        for i, k in enumerate(recs["request_key"].tolist()):
            rows.setdefault(k, []).append(i)
        for k, idx in rows.items():
            q = self._queues.get(k)
            if q is not None:
                q.put_nowait(recs if len(idx) == len(recs) else recs[idx])

    async def _pump_events(self) -> None:
        async for ev in self._events:
            if ev.request_id in self._transcripts:
                self._route_transcript(ev)
            if 0 < ev.t_begin_ns <= ev.t_mono_ns and ev.kind in ("done", "error", "cancelled"):
                # The stage's hold of the request: it took it at t_begin_ns.
                self._stage_lat[ev.source].append((ev.t_mono_ns - ev.t_begin_ns) / 1e9)
            if ev.kind == "error":
                self._fail(ev.request_id, _failure(ev))
            if ev.kind == "modality_ready":
                self._producers[ev.modality] = ev.source
            elif ev.kind in ("done", "error", "cancelled"):
                waits = self._awaiting.get(ev.request_id)
                if waits is not None:
                    waits.discard(ev.source)
            elif ev.kind == "stage_lost":
                for rid, waits in list(self._awaiting.items()):
                    if ev.source in waits:
                        self._fail(rid, f"stage {ev.source!r} died ({ev.detail}) before it "
                                        "took this request")

    def _fail(self, request_id: str, why: str) -> None:
        key = self._by_id.get(request_id)
        if key is not None and key in self._queues:
            self._queues[key].put_nowait(PipelineError(why))

    # --- transcribe-mode audio ------------------------------------------------------------
    def transcribe(self, request_id: str, clips, timeout: float) -> list[str]:
        """The audio stage's transcript of each clip (float32 mono 16 kHz PCM), in order.

        Blocking: called from a worker thread (the preparer's), never on the event loop,
        whose pump resolves the answers. Raises AudioStageError (see the module docstring)."""
        from control.messages import StageEvent

        if self._plane is None:
            raise AudioStageError("the gateway is not connected to the pipeline", 503)
        down = self._stages_down()
        if down:
            raise AudioStageError(f"the pipeline is not ready: {down}", 503)
        t0 = time.monotonic_ns()
        futures = [concurrent.futures.Future() for _ in clips]
        self._transcripts[request_id] = futures
        try:
            for n, clip in enumerate(clips):
                pcm = np.ascontiguousarray(clip, dtype=np.float32)
                try:
                    ref = self._pool(self.channels["pcm"]).put(pcm, readers=1,
                                                              timeout=self.put_timeout)
                except Exception as exc:  # pool full past the timeout, clip over slot_bytes
                    raise AudioStageError(f"the pipeline cannot take audio clip {n} now: {exc}",
                                          503, n) from exc
                self._w_transcribe.write(StageEvent(
                    request_id=request_id, kind=TRANSCRIBE_KIND, modality="audio",
                    output=shm_ref(ref, pcm.nbytes), n_tokens=n,
                    detail=json.dumps({"clip": n, "sample_rate": PCM_SAMPLE_RATE})))
            deadline = time.monotonic() + timeout
            texts = []
            for n, fut in enumerate(futures):
                try:
                    texts.append(fut.result(max(0.0, deadline - time.monotonic())))
                except concurrent.futures.TimeoutError:
                    raise AudioStageError(f"the audio stage did not transcribe audio clip {n} "
                                          f"within {timeout:g} s", 503, n) from None
        finally:
            self._transcripts.pop(request_id, None)
        tracer = getattr(self, "tracer", None)
        if tracer is not None:
            tracer.emit("gateway.audio_transcribe", request_id, t0, clips=len(texts))
        return texts

    def _route_transcript(self, ev) -> None:
        """A done/error event for a request waiting for its transcript (event loop thread:
        the only one that completes these futures)."""
        futures = self._transcripts.get(ev.request_id) or []
        if ev.kind == "done":
            try:
                info = json.loads(ev.detail)
                n, text = int(info["clip"]), str(info["text"])
            except (ValueError, TypeError, KeyError):
                return  # some other stage's done event for this id
            if 0 <= n < len(futures) and not futures[n].done():
                futures[n].set_result(text)
        elif ev.kind == "error":
            status = {400: 400, 503: 503}.get(int(ev.code), 500)
            clip = None
            if ev.detail.startswith("audio: clip "):
                head = ev.detail[len("audio: clip "):].split(":", 1)[0]
                clip = int(head) if head.isdigit() else None
            err = AudioStageError(_failure(ev), status, clip)
            for fut in futures:
                if not fut.done():
                    fut.set_exception(err)

    # --- health and stats ---------------------------------------------------------------
    def _take_states(self) -> tuple[dict[str, str], dict[str, str]]:
        """The newest state and detail of every stage, as copies: the event loop and the
        threads preparing media (frames_resized_downstream) both take them."""
        with self._states_lock:
            for st in self._state_reader.take(0):
                self._states[st.stage] = st.state
                self._details[st.stage] = st.detail
            return dict(self._states), dict(self._details)

    def frames_resized_downstream(self) -> bool:
        """Whether a ready stage resizes frames on its device (the vision stage on a GPU says
        so): the gateway may then send an image at its own size. Thread-safe."""
        from runtime.compute import RESIZES_FRAMES, read_ready_detail

        if self._plane is None:
            return False
        states, details = self._take_states()
        return any(states.get(stage) in ("ready", "busy")
                   and RESIZES_FRAMES in read_ready_detail(detail)[1]
                   for stage, detail in details.items())

    def _stages_down(self) -> str:
        """'' when every stage that announced a state is ready or busy, else which are not."""
        if self._plane is None:
            return ""
        states, _ = self._take_states()
        return "; ".join(f"stage {k} is {v}" for k, v in states.items()
                         if v not in ("ready", "busy"))

    async def health(self) -> PipelineHealth:
        if self._plane is None:
            return PipelineHealth(False, "not started")
        states, _ = self._take_states()
        bad = {k: v for k, v in states.items() if v not in ("ready", "busy")}
        if not states:
            return PipelineHealth(False, "no stage has announced its state yet")
        return PipelineHealth(not bad, "; ".join(f"{k}: {v}" for k, v in bad.items()), states)

    def stats(self) -> PipelineStats:
        drained = {}
        for stage, values in self._stage_lat.items():
            if values:
                drained[stage] = list(values)
                values.clear()
        if self._stats_reader is not None:
            batch = self._stats_reader.read_latest()
            if len(batch.records):
                self._engine_stats = batch.records[-1].copy()
        e = self._engine_stats
        if e is None:
            return PipelineStats(num_requests_running=len(self._queues), stage_latencies=drained)
        return PipelineStats(
            num_requests_running=int(e["running"]),
            num_requests_waiting=int(e["waiting"]) + int(e["waiting_modalities"]),
            kv_cache_usage=float(e["kv_usage"]), prefix_cache_queries=int(e["prefix_queries"]),
            prefix_cache_hits=int(e["prefix_hits"]), stage_latencies=drained)

    def engine_stats(self) -> dict | None:
        """The newest engine_stats record as a dict (None before the first one)."""
        self.stats()
        e = self._engine_stats
        return None if e is None else {n: e[n].item() for n in e.dtype.names}
