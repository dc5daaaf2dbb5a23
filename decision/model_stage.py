"""The decision stage's model compute (params.compute = "model"): the GLM decoder behind the
continuous-batching engine.

Model compute, per request (`Request` on DDS):
1. prompt ids from the Request itself (``prompt_ids``, prompts of at most
   control.messages.INLINE_PROMPT_TOKENS) or from the `prompts` slot the gateway wrote
   (int32; ``Request.prompt``): the pool keeps a 3,000-token screenshot prompt off the
   control plane;
2. M-RoPE positions (decision.fusion.mrope_positions) from the image grids the gateway put in
   ``extra["image_grids"]``; one declared modality per image (`image0`, `image1`, ...) and per
   audio clip (`audio0`, ...) at its placeholder positions, and only those, so a text request
   is scheduled at once and an image request waits only for the vision stage;
3. `modality_ready` events (detail JSON ``{"key": "image0"}``) are read from the embeddings
   slot and handed to the engine (`provide_modality`): on the CPU it uses the slot in place
   and gives it back when the request ends (copied out earlier while the pool runs short);
   on CUDA the step that first needs the rows queues their copy to the device (the stage
   page-locks its input pools at start, runtime.host_pinning, so the copy is a DMA), and
   the hand-off itself does no CUDA work;
4. `engine.step()` runs while any request is schedulable; each step's tokens go into the
   `tokens` ring as TOKEN_RECORDs with one write (one doorbell ring), the last one carrying
   the engine's finish reason (stop / length / cancelled / error) and, when asked, logprobs;
5. cancels (client gone) and upstream errors cancel the request in the engine;
6. engine load (running / waiting / KV usage / prefix-cache queries and hits) goes a few times
   a second into the `engine_stats` ring (runtime.records.ENGINE_STATS_RECORD), which the
   gateway's /metrics reads.
Idle, the stage sleeps in the runtime's DDS wait (woken by a message or a signal, else every
0.5 s); it steps only while a request is schedulable.
"""
from __future__ import annotations

import json
import time
import traceback

import numpy as np
import torch

from control.messages import unpack_extra
from decision.decoder import GlmDecoder
from decision.engine import (EngineConfig, FinishReason, LLMEngine, ModalityInput,
                             RequestStatus, SamplingParams, TokenRecord)
from decision.fusion import image_token_count, mrope_positions
from modelcore.config import ModelConfig
from modelcore.tokenizer import GlmTokenizer
from runtime.compute import (audio_placeholder, request_key, resolve_model_dir, slot_ref,
                             torch_device_dtype)
from runtime.records import (ENGINE_STATS_RECORD, FINISH_CODES, FLAG_ERROR, FLAG_LAST,
                             FLAG_LOGPROBS, MAX_TOP_LOGPROBS, TOKEN_HEAD, TOKEN_RECORD)

# Everything is imported here, once: an import statement inside a per-request method cost
# several microseconds each with a cold cache (decision.engine is a package, so `from ... import`
# runs importlib's Python code).

EARLY_KEEP_S = 30.0       # embeddings announced before their request arrived are kept this long
STATS_EVERY_S = 0.25      # engine_stats records at most this often while busy ...
STATS_IDLE_EVERY_S = 1.0  # ... and this often while idle
EMBED_RESERVE_FRACTION = 4  # slots the engine holds in place leave 1/4 of the pool free
_NO_TOP_IDS = np.zeros(TOKEN_RECORD["top_ids"].shape, np.int32)     # a record without logprobs
_NO_TOP_LOGPROBS = np.zeros(TOKEN_RECORD["top_logprobs"].shape, np.float32)


def _sent(value) -> float:
    """The value the client sent, from its float32 on the wire: the shortest decimal that
    float32 reads back as itself (0.85 stays 0.85, which the sampler compares exactly; 1e-9
    stays 1e-9, where rounding to 6 places made it 0)."""
    return float(str(np.float32(value)))


class _Release:
    """Gives one share of a pool slot back, once (the engine's release callback)."""

    __slots__ = ("pool", "ref")

    def __init__(self, pool, ref):
        self.pool, self.ref = pool, ref

    def __call__(self) -> None:
        ref, self.ref = self.ref, None
        if ref is not None:
            self.pool.release(ref)


class ModelDecisionStage:
    # The runtime asks between two engine steps whether a message came: from a watched
    # inbox that is an attribute read, not a call into DDS (control.arrival).
    watch_inbox = True

    def __init__(self, ctx):
        self.ctx = ctx
        p = ctx.params
        self.model_dir = resolve_model_dir(ctx)
        self.device, self.dtype = torch_device_dtype(ctx)
        if self.device.type == "cpu" and p.get("threads"):
            torch.set_num_threads(int(p["threads"]))
        self.mcfg = ModelConfig.from_dir(self.model_dir)
        tok = GlmTokenizer.from_dir(self.model_dir)
        names = audio_placeholder(tok)
        self.audio_token_id = tok.token_id(names[1]) if names else None
        self.image_token_id = self.mcfg.image_token_id
        self.merge = self.mcfg.vision.spatial_merge_size
        self.decoder = GlmDecoder.from_pretrained(self.model_dir, dtype=self.dtype,
                                                  device=self.device, config=self.mcfg)
        kv_mb = p.get("kv_cache_mb")
        self.engine_config = EngineConfig(
            block_size=int(p.get("block_size", 16)),
            max_num_seqs=int(p.get("max_num_seqs", 64)),
            max_num_batched_tokens=int(p.get("max_num_batched_tokens", 2048)),
            max_model_len=int(p["max_model_len"]) if p.get("max_model_len") else None,
            gpu_memory_utilization=float(p.get("gpu_memory_utilization", 0.9)),
            kv_cache_bytes=int(float(kv_mb) * 2**20) if kv_mb else (
                None if self.device.type == "cuda" else 256 * 2**20),
            enable_prefix_cache=bool(p.get("prefix_cache", True)),
            cuda_graphs=bool(p.get("cuda_graphs", True)),
            overlap_decode=None if p.get("overlap_decode") is None else bool(p["overlap_decode"]))
        self._engine_cls = LLMEngine
        self.engine = LLMEngine(self.decoder, self.engine_config)
        self.pinned = None
        if self.device.type == "cuda":
            self._warm_up()
            from runtime.host_pinning import pin_pools

            self.pinned = pin_pools(ctx, ctx.stage.inputs)
        self.out_channel = ctx.stage.outputs[0] if ctx.stage.outputs else "tokens"
        self._writer = self.ctx.ring(self.out_channel).writer()
        self._stats_writer = (self.ctx.ring("engine_stats").writer(doorbell=False)
                              if "engine_stats" in ctx.launch.channels else None)
        self._stats_at = 0.0
        self.produced: dict[str, int] = {}        # request id -> tokens written so far
        self._keys: dict[str, int] = {}           # request id -> its token records' key
        self.early: dict[str, list] = {}          # request id -> modality_ready events
        self.early_at: dict[str, float] = {}
        # Request id -> (when, embeddings still to come) of a request cancelled while it waited
        # for them: their slots go back as they arrive (they were kept as early ones, which
        # with the pool full for good no later arrival ever pruned).
        self._orphans: dict[str, tuple[float, int]] = {}
        self.prefix_queries = 0
        self.finished = 0
        self._upstream_failed: set[str] = set()   # cancelled because a perception stage failed
        # Tracing (spans for `autoglm profile`): when each request arrived while it still waits
        # for modalities, and when its prefill began (the first step that computed its rows).
        self.tracer = ctx.tracer
        self._admitting: dict[str, int] = {}      # request id -> arrival (monotonic ns)
        self._prefilling: set[str] = set()        # admitted, no token yet
        self._prefill_start: dict[str, int] = {}
        ctx.log(f"decoder from {self.model_dir} on {self.device} ({self.dtype}); KV cache "
                f"{self.engine.blocks.usable_blocks} blocks of {self.engine_config.block_size} "
                f"tokens; max_model_len {self.engine.max_model_len}; overlapped decode "
                f"{'on' if self.engine.overlap else 'off'}")

    # --- requests in ---------------------------------------------------------------------
    def on_request(self, req) -> None:
        rid = req.request_id
        t_arrival = time.monotonic_ns()
        self.ctx.begin(rid)
        try:
            extra = unpack_extra(req.extra)
            ids = self._prompt_ids(req, extra)
            sampling = self._sampling(req, extra)
            positions, modalities = self._layout(ids, req, extra)
            self.engine.add_request(rid, ids, sampling, modalities=modalities,
                                    mrope_positions=positions)
        except Exception as e:
            # Its embeddings still to come go back as they arrive.
            coming = len(req.modalities) - len(self.early.get(rid, []))
            if coming > 0:
                self._orphans[rid] = (time.monotonic(), coming)
            self._fail_unadmitted(rid, f"decision: cannot admit the request: {e}")
            return
        self.produced[rid] = 0
        self.prefix_queries += len(ids)
        self._prefilling.add(rid)
        self._admitting[rid] = t_arrival
        for ev in self.early.pop(rid, []):
            self._provide(ev)
        self.early_at.pop(rid, None)
        self._maybe_admitted(rid, len(modalities))

    def _maybe_admitted(self, rid: str, n_modalities: int | None = None) -> None:
        """decision.admission: arrival .. every declared modality present (at once for text)."""
        t0 = self._admitting.get(rid)
        if t0 is None:
            return
        r = self.engine.requests.get(rid)
        if r is None or r.status is not RequestStatus.WAITING_FOR_MODALITIES:
            del self._admitting[rid]
            if r is not None:
                self.tracer.emit("decision.admission", rid, t0,
                                 modalities=len(r.modalities) if n_modalities is None
                                 else n_modalities)

    def _prompt_ids(self, req, extra) -> list[int]:
        if req.prompt.channel:
            ref = slot_ref(req.prompt)
            with self.ctx.pool(ref.channel).view(ref) as arr:
                ids = np.asarray(arr).astype(np.int64).tolist()
        elif len(req.prompt_ids):
            ids = list(req.prompt_ids)
        else:
            raise ValueError("the request carries no prompt (no prompts slot, no prompt ids)")
        if req.n_prompt_tokens and len(ids) != int(req.n_prompt_tokens):
            raise ValueError(f"prompt has {len(ids)} ids, the request says {req.n_prompt_tokens}")
        return ids

    @staticmethod
    def _sampling(req, extra):
        s = req.sampling
        logprobs = None
        if extra.get("logprobs"):
            logprobs = int(extra.get("top_logprobs") or 0)
        return SamplingParams(
            max_tokens=int(s.max_new_tokens), temperature=_sent(s.temperature),
            top_p=_sent(s.top_p), top_k=int(s.top_k),
            seed=int(s.seed) if s.seeded else None,
            stop_token_ids=tuple(int(t) for t in s.stop_token_ids),
            repetition_penalty=_sent(s.repetition_penalty),
            frequency_penalty=float(extra.get("frequency_penalty") or 0.0),
            presence_penalty=float(extra.get("presence_penalty") or 0.0),
            logprobs=logprobs, logit_bias=tuple(extra.get("logit_bias", ())))

    def _layout(self, ids, req, extra):
        """M-RoPE positions and the declared modalities (placeholder positions of each)."""
        mods = list(req.modalities)
        grids = [tuple(int(v) for v in g) for g in extra.get("image_grids", [])]
        if not mods and not grids and self.image_token_id not in ids:
            # Text only: positions 0..P-1 on all three rows, the engine's default (building
            # them here cost the request ~0.3 ms of cold torch calls on the 2-core host).
            return None, []
        if mods.count("image") != len(grids):
            raise ValueError(f"{mods.count('image')} image(s) but {len(grids)} image grid(s) "
                             f"in the request")
        pos = mrope_positions(ids, self.image_token_id, grids, self.merge)
        arr = np.asarray(ids)
        declared = []
        image_at = np.flatnonzero(arr == self.image_token_id).tolist()
        start = 0
        for i, g in enumerate(grids):
            n = image_token_count(g, self.merge)
            declared.append(ModalityInput(f"image{i}", image_at[start:start + n]))
            start += n
        n_audio = mods.count("audio")
        if n_audio:
            if self.audio_token_id is None:
                raise ValueError("audio given but the tokenizer has no audio placeholder token")
            counts = [int(c) for c in extra.get("audio_tokens", [])]
            audio_at = np.flatnonzero(arr == self.audio_token_id).tolist()
            if len(counts) != n_audio or sum(counts) != len(audio_at):
                raise ValueError(f"{n_audio} audio clip(s) with {counts} tokens, but the prompt "
                                 f"has {len(audio_at)} audio placeholder tokens")
            start = 0
            for j, n in enumerate(counts):
                declared.append(ModalityInput(f"audio{j}", audio_at[start:start + n]))
                start += n
        return pos.ids, declared

    # --- events: embeddings arrive, upstream failures -----------------------------------------
    def on_event(self, ev) -> None:
        if ev.kind == "modality_ready":
            if ev.request_id in self.produced:
                self._provide(ev)
            elif ev.request_id in self._orphans:   # its request was cancelled meanwhile
                self._release_events([ev])
                at, left = self._orphans.pop(ev.request_id)
                if left > 1:
                    self._orphans[ev.request_id] = (at, left - 1)
            else:  # the embeddings outran the request (two DDS writers): keep them a while
                self._prune_early()
                self.early.setdefault(ev.request_id, []).append(ev)
                self.early_at.setdefault(ev.request_id, time.monotonic())
        elif ev.kind == "error" and ev.request_id in self.produced:
            self._cancel(ev.request_id)
            self._upstream_failed.add(ev.request_id)
        elif ev.kind == "error" and ev.request_id in self.early:
            self._release_events(self.early.pop(ev.request_id))

    def _cancel(self, rid: str) -> None:
        """Cancel a request in the engine, minding the embeddings it still waits for."""
        r = self.engine.requests.get(rid)
        if r is not None and r.status is RequestStatus.WAITING_FOR_MODALITIES:
            self._orphans[rid] = (time.monotonic(), len(r.missing_modalities()))
        self.engine.cancel(rid)

    def _provide(self, ev) -> None:
        rid = ev.request_id
        ref = slot_ref(ev.output)
        pool = self.ctx.pool(ref.channel)
        try:
            key = json.loads(ev.detail or "{}").get("key") or ev.modality
            t_read = time.monotonic_ns()
            emb = pool.read_torch(ref)
            # The engine uses the slot in place (no copy on the CPU) and gives it back through
            # release() when the request ends; on CUDA it copies to the device and gives the
            # slot back at once. It calls release() even when it refuses the rows.
            self.engine.provide_modality(rid, key, emb, release=_Release(pool, ref))
            t_done = time.monotonic_ns()
            # The hand-off ends here: the slot read and handed to the engine.
            self.tracer.emit("decision.embed_read", rid, t_read, t_done, key=key,
                             bytes=int(ev.output.nbytes))
            self._relieve(pool)
            self._maybe_admitted(rid)
        except Exception as e:
            self._cancel(rid)
            self._upstream_failed.add(rid)
            self.ctx.fail(rid, f"decision: embeddings of {ev.modality} unusable: {e}")

    def _relieve(self, pool) -> None:
        """Keep the producers of `pool` fed: slots the engine holds in place are copied out and
        given back while fewer than a quarter of the pool's slots are free (the vision stage
        would wait for one; 16 slots, up to 64 running requests). Held slots only grow here,
        and every slot a producer takes is announced to this stage, so checking on each
        arrival is enough."""
        if not self.engine.held_views:
            return
        reserve = max(1, pool.n_slots // EMBED_RESERVE_FRACTION)
        short = reserve - pool.free_slots()
        if short > 0:
            self.engine.release_views(keep=True, limit=short)

    def _release_events(self, events) -> None:
        for ev in events:
            try:
                self.ctx.pool(ev.output.channel).release(slot_ref(ev.output))
            except Exception:
                pass  # already reclaimed

    def _prune_early(self) -> None:
        now = time.monotonic()
        for rid in [r for r, t in self.early_at.items() if now - t > EARLY_KEEP_S]:
            del self.early_at[rid]
            self._release_events(self.early.pop(rid, []))
        for rid in [r for r, (t, _) in self._orphans.items() if now - t > EARLY_KEEP_S]:
            del self._orphans[rid]   # what never came (its stage failed) is not waited for

    def on_cancel(self, c) -> None:
        if c.request_id in self.produced:
            self.ctx.log(f"cancel {c.request_id} ({c.reason or 'no reason given'}) after "
                         f"{self.produced[c.request_id]} tokens")
            self._cancel(c.request_id)

    # --- the step loop ---------------------------------------------------------------------
    def poll(self, timeout: float) -> None:
        if self.engine.has_runnable():
            self._step()
        elif timeout > 0:
            if self.early_at or self._orphans:
                self._prune_early()   # idle: also when no embedding comes to prune them
            self.ctx.wait_for_messages(timeout)   # until a request or an embedding comes
        self._publish_stats()

    def _step(self) -> None:
        t0 = time.monotonic_ns()
        try:
            records = self.engine.step()
        except Exception as e:  # an engine failure ends every request in it, not the stage
            traceback.print_exc()
            self._fail_all(f"decision: engine step failed: {type(e).__name__}: {e}")
            return
        t1 = time.monotonic_ns()
        if self._prefilling:
            # A prefill begins with the first step that computed some of its rows (chunked
            # prefill may take several steps before the first token).
            for rid in self._prefilling.difference(self._prefill_start):
                r = self.engine.requests.get(rid)
                if r is None or r.num_computed > 0:
                    self._prefill_start[rid] = t0
        if records:
            self._write(records, (t0, t1))

    def _write(self, records, step: tuple[int, int] | None = None) -> None:
        """Token records of one step into the ring; ``step`` = the step's (start, end)
        monotonic ns, for its spans."""
        if len(records) == 1 and self._write_next_token(records[0], step):
            return
        rows = []     # (scalar fields, (top ids, top logprobs) or None) per record
        now = time.monotonic_ns()
        ends, firsts, decoded, decoded_index = [], [], [], []
        keys = self._keys
        for r in records:
            rid = r.request_id
            n = self.produced.get(rid, 0)
            key = keys.get(rid)
            if key is None:
                key = keys[rid] = request_key(rid)
            flags = finish = n_top = 0
            logprob = np.nan
            top = None
            if r.token_id >= 0:
                self.produced[rid] = n + 1
                if n == 0:
                    firsts.append(rid)
                else:
                    decoded.append(rid)
                    decoded_index.append(n)
                if r.logprob is not None:
                    flags |= FLAG_LOGPROBS
                    logprob = r.logprob
                    alts = list(r.top_logprobs)[:MAX_TOP_LOGPROBS]
                    n_top = len(alts)
                    top = np.zeros_like(_NO_TOP_IDS), np.zeros_like(_NO_TOP_LOGPROBS)
                    for j, (tid, lp) in enumerate(alts):
                        top[0][j], top[1][j] = tid, lp
            if r.finished:
                reason = r.finish_reason.value if r.finish_reason is not None else "stop"
                if rid in self._upstream_failed:
                    reason = "cancelled"
                flags |= FLAG_LAST | (FLAG_ERROR if reason == "error" else 0)
                finish = FINISH_CODES[reason]
                ends.append((rid, reason, r.error, r.token_id >= 0))
                keys.pop(rid, None)
            rows.append(((key, now, n, r.token_id, flags, finish, n_top, logprob, 0), top))
        if len(rows) == 1 and rows[0][1] is None:
            # One request decoding, no logprobs: the per-token case, packed with no numpy.
            self._writer.write_packed(TOKEN_HEAD, rows[0][0])
        else:
            out = np.empty(len(rows), dtype=TOKEN_RECORD)
            for i, (head, top) in enumerate(rows):   # one assignment per record
                out[i] = (*head, *(top or (_NO_TOP_IDS, _NO_TOP_LOGPROBS)))
            self._writer.write_many(out)
        if step is not None and self.tracer.enabled:
            self._trace_step(step, now, firsts, decoded, decoded_index, ends)
        for rid, reason, error, _ in ends:
            self._forget_trace(rid)
            n = self.produced.pop(rid, 0)
            self.finished += 1
            if rid in self._upstream_failed:
                self._upstream_failed.discard(rid)
                self.ctx.finish(rid, "cancelled", detail="failed upstream", n_tokens=n)
            elif reason == "error":
                self.ctx.fail(rid, f"decision: {error or 'generation failed'}")
            elif reason == "cancelled":
                self.ctx.finish(rid, "cancelled", n_tokens=n)
            else:
                self.ctx.finish(rid, n_tokens=n, detail=reason)

    def _write_next_token(self, r, step) -> bool:
        """The per-token case at low load, written with the least work between two steps:
        one request decoding, a token that is neither its first nor its last, no logprobs.
        False (nothing written) for anything else."""
        rid = r.request_id
        n = self.produced.get(rid, 0)
        key = self._keys.get(rid)
        if not n or key is None or r.finished or r.logprob is not None or r.token_id < 0:
            return False
        self.produced[rid] = n + 1
        self._writer.write_packed(TOKEN_HEAD, (key, time.monotonic_ns(), n, r.token_id,
                                               0, 0, 0, np.nan, 0))
        if step is not None and self.tracer.enabled:
            # What emit_batch of a batch of one stands for, without the batch's lists.
            self.tracer.emit("decision.token", rid, step[0], step[1], index=n, batch=1)
        return True

    def _trace_step(self, step, written_ns, firsts, decoded, decoded_index, ends) -> None:
        """The spans of one engine step, written after its records reached the ring (the
        gateway is never kept waiting on them): prefill of requests whose first token came,
        first/last token marks at the records' write time, and one batched decision.token span
        for every request this step decoded a token of. The tracer bundles: they go out with
        the stage's other spans when it goes idle, or every 0.5 s / 64 spans."""
        t0, t1 = step
        tr = self.tracer
        for rid in firsts:
            tr.emit("decision.prefill", rid, self._prefill_start.pop(rid, t0), t1)
            tr.mark("decision.first_token", rid, written_ns)
            self._prefilling.discard(rid)
        if decoded:
            tr.emit_batch("decision.token", decoded, t0, t1, index=decoded_index)
        for rid, reason, _, with_token in ends:
            if with_token:
                tr.mark("decision.last_token", rid, written_ns, finish=reason,
                        tokens=self.produced.get(rid, 0))

    def _forget_trace(self, rid: str) -> None:
        self._admitting.pop(rid, None)
        self._prefilling.discard(rid)
        self._prefill_start.pop(rid, None)

    def _fail_unadmitted(self, rid: str, detail: str) -> None:
        """A request the engine never took: an error record (so the gateway's stream ends)
        and the error event."""
        self.produced[rid] = 0
        self._write([TokenRecord(rid, -1, -1, None, (), True, FinishReason.ERROR, detail)])
        self._release_events(self.early.pop(rid, []))
        self.early_at.pop(rid, None)

    def _fail_all(self, detail: str) -> None:

        rids = list(self.engine.requests)
        self.engine.release_views(keep=False)     # the embeddings slots it held go back
        self.engine = self._engine_cls(self.decoder, self.engine_config)   # fresh state
        self._write([TokenRecord(r, -1, -1, None, (), True, FinishReason.ERROR, detail)
                     for r in rids])

    # --- stats ---------------------------------------------------------------------------------
    def stats_record(self):
        e = self.engine
        rec = np.zeros((), dtype=ENGINE_STATS_RECORD)
        statuses = [r.status for r in e.requests.values()]
        total = e.blocks.usable_blocks
        free = e.num_free_blocks()
        rec["t_mono_ns"] = time.monotonic_ns()
        rec["running"] = statuses.count(RequestStatus.RUNNING)
        rec["waiting"] = statuses.count(RequestStatus.WAITING)
        rec["waiting_modalities"] = statuses.count(RequestStatus.WAITING_FOR_MODALITIES)
        rec["total_blocks"] = total
        rec["free_blocks"] = free
        rec["kv_usage"] = 0.0 if not total else max(0.0, 1.0 - free / total)
        rec["prefix_queries"] = self.prefix_queries
        rec["prefix_hits"] = e.stats.prefix_cache_hit_tokens
        rec["prefill_tokens"] = e.stats.prefill_tokens_computed
        rec["decode_tokens"] = e.stats.decode_tokens
        rec["steps"] = e.stats.steps
        rec["preemptions"] = e.stats.preemptions
        rec["finished"] = self.finished
        return rec

    def _publish_stats(self) -> None:
        if self._stats_writer is None:
            return
        now = time.monotonic()
        every = STATS_EVERY_S if self.engine.requests else STATS_IDLE_EVERY_S
        # A request that came or went is said at once (metrics and tests read it), unless
        # the engine is stepping: then the next periodic record says it. Written between a
        # prefill and the first decode step, it cost each request ~0.15 ms on the 2-core host.
        sig = (len(self.engine.requests), self.finished)
        if now - self._stats_at < every and (sig == getattr(self, "_stats_sig", None)
                                             or self.engine.has_runnable()):
            return
        self._stats_at, self._stats_sig = now, sig
        self._stats_writer.write(self.stats_record())

    def _warm_up(self) -> None:
        """Before the stage reports ready: dummy requests through prefill and decode compile
        the Triton kernels, then every decode graph bucket (batch sizes x block-table widths up
        to max_model_len) is captured. Otherwise a request meeting a new shape pays for the
        compilation or capture in the middle of serving. Triton compiles a kernel once for
        row counts divisible by 16 and once for others, so the prefills cover both (32 rows
        alone, then 32 + 35 together), and one prefill joins a decoding request (a mixed step):
        with the first prefill only, the first text requests of a serving run waited 0.3-0.7 s
        each on the H100 for compilations. It took 7.8-9.4 s at start on fresh H100s with the
        embedded model (56 graphs), 1.4 s with Triton's cache already filled."""
        t0 = time.monotonic()
        eng = self.engine
        block = eng.config.block_size
        for batch in ([2 * block], [2 * block, 2 * block + 3]):
            for i, n in enumerate(batch):
                eng.add_request(f"warm-up-{i}", [0] * n, SamplingParams(max_tokens=4))
            while eng.has_unfinished():
                eng.step()
        # A request arriving while another decodes: a step mixing prefill and decode rows.
        eng.add_request("warm-up-0", [0] * 2 * block, SamplingParams(max_tokens=8))
        eng.step()
        eng.step()
        eng.add_request("warm-up-1", [0] * (2 * block + 3), SamplingParams(max_tokens=4))
        while eng.has_unfinished():
            eng.step()
        if eng.graphs is not None:
            eng.graphs.capture(widths=eng.graphs.widths)
        torch.cuda.synchronize(self.device)
        graphs = len(eng.graphs.graphs) if eng.graphs is not None else 0
        self.ctx.log(f"warmed up in {time.monotonic() - t0:.1f} s ({graphs} decode graphs)")

    def close(self) -> None:
        self.engine.release_views(keep=False)
        if self.pinned is not None:
            self.pinned.unpin()
        for w in (self._writer, self._stats_writer):
            if w is not None:
                w.close()


