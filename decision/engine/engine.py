"""The decision engine: continuous batching over a paged KV cache, as a library.

    engine = LLMEngine(decoder, EngineConfig(...))
    engine.add_request("r1", prompt_ids, SamplingParams(...), modalities=[...], mrope_positions=...)
    engine.provide_modality("r1", "image0", embeddings)     # when the vision stage delivers
    records = engine.step()                                  # new tokens of every request

The stage process around it owns the transport (DDS events, shm rings); the engine only keeps
request state, schedules, runs the decoder and samples. A request waits until every
modality it declared has arrived and nothing else; requests join and leave between steps.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .block_manager import BlockManager
from .cuda_graphs import bucket_width
from .kv_cache import PagedKVCache, PrefillChunk, StepAttention, plan_num_blocks
from .request import (FinishReason, ModalityInput, Request, RequestStatus, TokenRecord,
                      call_release)
from .sampling import DeviceSample, SamplerState, SamplingParams, sample_on_device
from .scheduler import ScheduledChunk, Scheduler


@dataclass
class EngineConfig:
    block_size: int = 16
    max_num_seqs: int = 64
    # Tokens computed per step at most (decodes + prefill chunks): the chunked-prefill size.
    max_num_batched_tokens: int = 2048
    # None: the model's max_position_embeddings.
    max_model_len: int | None = None
    # KV cache budget: num_blocks, else kv_cache_bytes, else (CUDA only) free memory less
    # (1 - gpu_memory_utilization) of the total, at most max_num_seqs sequences of max_model_len.
    gpu_memory_utilization: float = 0.9
    kv_cache_bytes: int | None = None
    num_blocks: int | None = None
    enable_prefix_cache: bool = True
    # CUDA graphs for decode-only steps (ignored off CUDA).
    cuda_graphs: bool = True
    graph_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    # torch.compile the graphed decode step (fuses element-wise kernels; compile per bucket).
    compile_decode: bool = False
    # Queue the next decode step before reading this one's tokens, so the GPU never waits
    # for the host's per-step work (None: on for CUDA). See LLMEngine._chain_decode.
    overlap_decode: bool | None = None


@dataclass
class EngineStats:
    prefill_tokens_computed: int = 0     # prompt (or recompute) rows run through the model
    prefix_cache_hit_tokens: int = 0     # prompt tokens served from cached blocks
    decode_tokens: int = 0
    steps: int = 0
    graph_steps: int = 0
    chained_steps: int = 0               # decode steps queued before the previous one was read
    preemptions: int = 0


class EngineError(ValueError):
    """A call into the engine is malformed (unknown request, bad shapes, duplicate id)."""


class LLMEngine:
    def __init__(self, model, config: EngineConfig | None = None):
        self.model = model
        self.config = cfg = config or EngineConfig()
        text = model.config.text
        weight = model.lm_head.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.vocab_size = text.vocab_size
        self.hidden_size = text.hidden_size
        self.max_model_len = cfg.max_model_len or text.max_position_embeddings
        num_blocks = plan_num_blocks(
            num_layers=text.num_hidden_layers, block_size=cfg.block_size,
            kv_heads=text.num_key_value_heads, head_dim=text.head_dim, dtype=self.dtype,
            device=self.device, gpu_memory_utilization=cfg.gpu_memory_utilization,
            kv_cache_bytes=cfg.kv_cache_bytes, num_blocks=cfg.num_blocks,
            max_useful_blocks=cfg.max_num_seqs * -(-self.max_model_len // cfg.block_size))
        self.cache = PagedKVCache(num_layers=text.num_hidden_layers, num_blocks=num_blocks,
                                  block_size=cfg.block_size, kv_heads=text.num_key_value_heads,
                                  head_dim=text.head_dim, dtype=self.dtype, device=self.device)
        self.blocks = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_cache)
        self.scheduler = Scheduler(self.blocks, cfg.max_num_seqs, cfg.max_num_batched_tokens)
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats()
        self._next_index = itertools.count()
        self._pending: list[TokenRecord] = []     # errors and cancels to report next step
        self.held_views = 0                       # borrowed embedding views (provide_modality)
        # A step whose tokens are still on the device (see _chain_decode).
        self._inflight: _Launched | None = None
        self.overlap = cfg.overlap_decode if cfg.overlap_decode is not None \
            else self.device.type == "cuda"
        self.graphs = None
        if cfg.cuda_graphs and self.device.type == "cuda":
            from .cuda_graphs import DecodeGraphRunner
            max_blocks = -(-self.max_model_len // cfg.block_size)
            self.graphs = DecodeGraphRunner(model, self.cache, cfg.graph_batch_sizes, max_blocks,
                                            compile=cfg.compile_decode)

    # --- requests in ---------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: Sequence[int],
                    sampling: SamplingParams | None = None, *,
                    modalities: Sequence[ModalityInput] = (),
                    mrope_positions: torch.Tensor | None = None,
                    inputs_embeds: torch.Tensor | None = None,
                    cache_salt: str | None = None) -> int:
        """Admit a request; returns its integer index (used in its token records).

        modalities: embeddings this request waits for (see `provide_modality`).
        mrope_positions [3, P]: the prompt's positions (default: 0..P-1 on all three).
        inputs_embeds [P, H]: rows replacing the whole prompt's token embeddings; such a
        request shares prefix-cache blocks only with others of the same `cache_salt`.
        Malformed input raises EngineError; a request that can never fit the KV cache is
        accepted and ends with finish reason "error" at the next step.
        """
        sampling = sampling or SamplingParams()
        if request_id in self.requests:
            raise EngineError(f"request {request_id!r} is already in the engine")
        ids = [int(t) for t in prompt_token_ids]
        p = len(ids)
        if p == 0:
            raise EngineError(f"request {request_id!r}: empty prompt")
        if any(t < 0 or t >= self.vocab_size for t in ids):
            bad = next(t for t in ids if t < 0 or t >= self.vocab_size)
            raise EngineError(f"request {request_id!r}: token id {bad} outside the vocabulary "
                              f"[0, {self.vocab_size})")
        positions = self._check_positions(request_id, mrope_positions, p)
        self._check_modalities(request_id, modalities, p)
        if inputs_embeds is not None and tuple(inputs_embeds.shape) != (p, self.hidden_size):
            raise EngineError(f"request {request_id!r}: inputs_embeds must be [{p}, "
                              f"{self.hidden_size}], got {tuple(inputs_embeds.shape)}")
        if inputs_embeds is not None:
            inputs_embeds = inputs_embeds.to(device=self.device, dtype=self.dtype)
        sampler = SamplerState.create(sampling, ids, self.vocab_size, self.device)
        cacheable = inputs_embeds is None or cache_salt is not None
        req = Request(request_id, next(self._next_index), ids, sampling, sampler, positions,
                      modalities, inputs_embeds, cacheable, self.config.block_size,
                      cache_salt=cache_salt)
        self.requests[request_id] = req
        problem = self._never_fits(req)
        if problem:
            self._finish(req, FinishReason.ERROR, error=problem)
        elif req.status is RequestStatus.WAITING:
            self.scheduler.add(req)
        return req.index

    def provide_modality(self, request_id: str, key: str, embeddings: torch.Tensor,
                         release: Callable[[], None] | None = None) -> None:
        """Deliver the embedding rows of a declared modality; the request becomes runnable
        once all its modalities are here.

        release: `embeddings` is a borrowed view (an shm slot) and release() gives it back.
        The engine calls it exactly once, whatever happens: at once when it copies the rows
        anyway (another dtype) or does not take them (error, finished request, duplicate),
        else when the request ends. Until then the view is used in place: on the CPU as it
        is; on a GPU the first step that needs the rows queues their copy to the device, with
        its other inputs (a DMA when the view is page-locked, see runtime.host_pinning), so
        this call does no CUDA work. `release_views` copies held views out early (a pool
        running short)."""
        try:
            req = self._get(request_id)
            if key not in req.modalities:
                raise EngineError(f"request {request_id!r} declared no modality {key!r} "
                                  f"(declared: {sorted(req.modalities)})")
            if req.status is not RequestStatus.WAITING_FOR_MODALITIES or key in req.embeddings:
                call_release(release)
                return  # finished (cancelled, error) or duplicate delivery: nothing to do
            rows = len(req.modalities[key].positions)
            if embeddings.dim() != 2 or tuple(embeddings.shape) != (rows, self.hidden_size):
                raise EngineError(f"request {request_id!r} modality {key!r}: expected "
                                  f"embeddings [{rows}, {self.hidden_size}], got "
                                  f"{tuple(embeddings.shape)}")
            rows_t = embeddings if embeddings.is_cpu and embeddings.dtype == self.dtype \
                else embeddings.to(device=self.device, dtype=self.dtype)
        except BaseException:
            call_release(release)
            raise
        req.embeddings[key] = rows_t
        if release is not None:
            if rows_t is embeddings:     # used in place: hold the view until the request ends
                req.borrowed[key] = release
                self.held_views += 1
            else:                        # copied (another dtype): give it back
                call_release(release)
        if not req.missing_modalities():
            req.status = RequestStatus.WAITING
            self.scheduler.add(req)

    def release_views(self, keep: bool = True, limit: int | None = None) -> int:
        """Give back up to `limit` borrowed embedding views (see provide_modality), those of
        requests past their prefill first (they need them only if preempted); with `keep`
        each is copied first, so its request runs on unchanged. keep=False only for an
        engine being discarded. Returns how many were given back."""
        if not self.held_views:
            return 0
        holders = [r for r in self.requests.values() if r.borrowed]
        holders.sort(key=lambda r: (r.num_computed < r.num_prompt, r.index))
        n = 0
        for req in holders:
            n += req.release_views(keep, None if limit is None else limit - n)
            if limit is not None and n >= limit:
                break
        self.held_views -= n
        return n

    def cancel(self, request_id: str) -> None:
        """Stop a request; it ends with "cancelled" in the next step's records."""
        req = self.requests.get(request_id)
        if req is not None and req.status is not RequestStatus.FINISHED:
            req.cancel_requested = True

    # --- state ---------------------------------------------------------------------------------
    def has_unfinished(self) -> bool:
        return bool(self.requests) or bool(self._pending) or self._inflight is not None

    def has_runnable(self) -> bool:
        """Whether `step()` would do work now (requests waiting only for modalities do not count)."""
        return (bool(self._pending) or self._inflight is not None or bool(self.scheduler.waiting)
                or bool(self.scheduler.running)
                or any(r.cancel_requested for r in self.requests.values()))

    def status(self, request_id: str) -> RequestStatus:
        return self._get(request_id).status

    def num_free_blocks(self) -> int:
        return self.blocks.num_available()

    # --- the step -------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[TokenRecord]:
        """Run one step; returns the token records that became known.

        With overlap on, a decode step's tokens are read one call later, right after the
        next decode step was queued: records then trail the launches by one step, and a
        request that stops on a stop token costs one discarded row in the step after.
        """
        records, self._pending = self._pending, []
        if self._inflight is not None:
            launched, self._inflight = self._inflight, None
            self._inflight = self._chain_decode(launched)
            return records + self._collect(launched)
        for req in [r for r in self.requests.values() if r.cancel_requested]:
            records.append(self._finish(req, FinishReason.CANCELLED))
        chunks = self.scheduler.schedule()
        self.stats.preemptions = self.scheduler.num_preemptions
        if not chunks:
            return records
        launched = self._launch(chunks)
        if launched is None:
            return records
        if self.overlap and len(launched.chunks) == len(chunks):
            self._inflight = launched          # read at the next call, after the next launch
            return records
        return records + self._collect(launched)

    # --- internals --------------------------------------------------------------------------------
    def _launch(self, chunks: list[ScheduledChunk], device_ids: torch.Tensor | None = None
                ) -> "_Launched | None":
        """Forward the chunks and queue the sampling of those that sample."""
        self.stats.steps += 1
        logits = self._run_model(chunks, device_ids)
        sampling = [c for c in chunks if c.samples]
        for c in chunks:
            c.request.num_computed = c.end
            if c.start >= c.request.num_prompt:
                self.stats.decode_tokens += 1
            else:
                self.stats.prefill_tokens_computed += c.num_new
            if c.request.cacheable and not c.samples:   # sampling ones: once their token is read
                self._register_full_blocks(c.request)
        if not sampling:
            return None
        return _Launched(sampling, sample_on_device(logits, [c.request.sampler for c in sampling]))

    def _collect(self, launched: "_Launched") -> list[TokenRecord]:
        """Read a launched step's tokens and append them to their requests."""
        result = launched.draws.to_host()
        records = []
        for i, c in enumerate(launched.chunks):
            req = c.request
            if req.status is RequestStatus.FINISHED:
                continue     # stopped (or cancelled) after this row was queued: discard it
            if req.cacheable:
                self._register_full_blocks(req)
            records.append(self._append_token(req, result.token_ids[i], result.logprobs[i],
                                              result.top_logprobs[i]))
        return records

    def _chain_decode(self, launched: "_Launched") -> "_Launched | None":
        """Queue the decode step after `launched` before its tokens are read, feeding its
        sampled ids to the next forward on the device. Only in the steady state: every
        running request decoding, nothing waiting, cancelled or pending, blocks to spare.
        Requests that reach max_tokens or max_model_len with the launched token are left
        out; a request that stops on a stop token is only known after, so its row in the
        chained step is computed and discarded (its KV write lands in its own, freed block,
        ordered on the stream before any reuse)."""
        live = [c for c in launched.chunks if c.request.status is RequestStatus.RUNNING]
        if (self._pending or self.scheduler.waiting or len(self.scheduler.running) != len(live)
                or any(r.cancel_requested for r in self.requests.values())):
            return None
        keep, chunks = [], []
        for i, c in enumerate(launched.chunks):
            req = c.request
            if req.status is not RequestStatus.RUNNING:
                continue                           # stopped after this row was queued
            k = len(req.output_ids) + 1            # the launched token's place in the output
            if k >= req.params.max_tokens or req.num_tokens + 1 >= self.max_model_len:
                continue                           # ends with the launched token: no next row
            if not self.scheduler.reserve(req, c.end + 1):
                return None                        # short of blocks: schedule() may preempt
            keep.append(i)
            chunks.append(ScheduledChunk(req, c.end, 1, chained=True))
        if not chunks:
            return None
        ids = launched.draws.token_ids
        if len(keep) < len(launched.chunks):
            ids = ids.index_select(0, torch.tensor(keep, device=ids.device))
        self.stats.chained_steps += 1
        return self._launch(chunks, device_ids=ids)

    def _run_model(self, chunks: list[ScheduledChunk], device_ids: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """Forward all scheduled rows; logits [n_sampling, V] of the rows that sample.

        device_ids: the rows' input tokens as a device tensor (a chained decode step, whose
        inputs were sampled but not read yet); else they come from the requests.
        """
        bs = self.config.block_size
        decodes = [c for c in chunks if c.is_decode]
        if self.graphs is not None and len(decodes) == len(chunks) \
                and not any(c.has_given_rows for c in chunks):   # the graphs embed ids only
            out = self.graphs.try_run(
                ids=device_ids if device_ids is not None
                else [c.request.token_ids(c.start, c.end)[0] for c in chunks],
                positions=torch.cat([c.request.position_ids(c.start, c.end) for c in chunks], 1),
                slots=[c.request.blocks[c.start // bs] * bs + c.start % bs for c in chunks],
                block_tables=[c.request.blocks for c in chunks],
                context_lens=[c.end for c in chunks])
            if out is not None:
                self.stats.graph_steps += 1
                return out
        ids, positions, slots, sample_rows, prefill, given = [], [], [], [], [], []
        row = 0
        for c in chunks:
            req = c.request
            if device_ids is None:
                ids.extend(req.token_ids(c.start, c.end))
            positions.append(req.position_ids(c.start, c.end))
            slots.extend(req.blocks[t // bs] * bs + t % bs for t in range(c.start, c.end))
            if not c.is_decode:
                prefill.append((c, row))
            if c.has_given_rows:
                given.append((c, row))
            row += c.num_new
            if c.samples:
                sample_rows.append(row - 1)
        dev = self.device
        ids_t = device_ids if device_ids is not None \
            else _to_device(torch.tensor(ids, dtype=torch.long), dev)
        embeds = self.model.embed(ids_t)
        for c, start in given:
            for offsets, rows in c.request.embedding_rows(c.start, c.end, dev):
                embeds[_to_device(offsets + start, dev)] = rows.to(embeds.dtype)
        table = lens = None
        if decodes:
            width = max(len(c.request.blocks) for c in decodes)
            if dev.type == "cuda":
                # The graph buckets' width: the attention kernel was compiled for its
                # specialisation at warm-up; an odd width compiled anew mid-serving (0.3-0.7 s
                # for the first requests that met a step mixing prefill and decode).
                width = bucket_width(width)
            table = torch.zeros(len(decodes), width, dtype=torch.long)
            for i, c in enumerate(decodes):
                table[i, :len(c.request.blocks)] = torch.tensor(c.request.blocks)
            table = _to_device(table, dev)
            lens = _to_device(torch.tensor([c.end for c in decodes]), dev)
        attn = StepAttention(
            self.cache, _to_device(torch.tensor(slots, dtype=torch.long), dev),
            decode_block_table=table, decode_context_lens=lens,
            prefill=[PrefillChunk(start, c.num_new, c.end,
                                  _to_device(torch.tensor(c.request.blocks[:-(-c.end // bs)]), dev))
                     for c, start in prefill])
        hidden = self.model.forward(embeds, _to_device(torch.cat(positions, 1), dev), attn)
        if not sample_rows:
            return hidden.new_zeros(0, self.vocab_size)
        return self.model.logits(hidden[_to_device(torch.tensor(sample_rows), dev)])

    def _register_full_blocks(self, req: Request) -> None:
        # Only blocks whose token ids are all known: a chained step computes a position whose
        # input token is still on the device, and a block's key is made from its tokens.
        full = min(req.num_computed, req.num_tokens) // self.config.block_size
        if full <= req.num_registered:
            return
        keys = req.block_keys(full)
        for b in range(req.num_registered, full):
            self.blocks.register(req.blocks[b], keys[b])
        req.num_registered = full

    def _append_token(self, req: Request, token: int, logprob, top) -> TokenRecord:
        req.output_ids.append(token)
        reason = None
        if token in req.params.stop_token_ids:
            reason = FinishReason.STOP
        elif len(req.output_ids) >= req.params.max_tokens or req.num_tokens >= self.max_model_len:
            reason = FinishReason.LENGTH
        if reason is None:
            return TokenRecord(req.request_id, req.index, token, logprob, tuple(top), False)
        self._finish(req, reason)
        return TokenRecord(req.request_id, req.index, token, logprob, tuple(top), True, reason)

    def _finish(self, req: Request, reason: FinishReason, error: str | None = None) -> TokenRecord:
        if req.status in (RequestStatus.WAITING, RequestStatus.RUNNING):
            self.scheduler.remove(req)
        self.stats.prefix_cache_hit_tokens += req.cached_prompt_tokens
        req.status = RequestStatus.FINISHED
        req.finish_reason, req.error = reason, error
        self.held_views -= req.release_views(keep=False)   # borrowed slots go back now
        req.embeddings.clear()
        self.requests.pop(req.request_id, None)
        record = TokenRecord(req.request_id, req.index, -1, None, (), True, reason, error)
        if reason is FinishReason.ERROR:
            self._pending.append(record)
        return record

    def _never_fits(self, req: Request) -> str | None:
        p = req.num_prompt
        if p >= self.max_model_len:
            return (f"prompt of {p} tokens does not fit max_model_len {self.max_model_len} "
                    f"(at least one token must be generated)")
        need_tokens = min(p + req.params.max_tokens, self.max_model_len)
        need_blocks = -(-need_tokens // self.config.block_size)
        have = self.blocks.usable_blocks
        if need_blocks > have:
            return (f"request needs {need_blocks} KV blocks ({need_tokens} tokens: prompt {p} + "
                    f"max_tokens {req.params.max_tokens}) but the whole cache holds {have} blocks "
                    f"({have * self.config.block_size} tokens); lower max_tokens or the prompt")
        return None

    def _check_positions(self, request_id, positions, p) -> torch.Tensor | None:
        if positions is None:
            return None   # the text layout (Request.position_ids)
        positions = torch.as_tensor(positions)
        if tuple(positions.shape) != (3, p):
            raise EngineError(f"request {request_id!r}: mrope_positions must be [3, {p}], got "
                              f"{tuple(positions.shape)}")
        return positions.to("cpu", torch.long).contiguous()

    def _check_modalities(self, request_id, modalities, p) -> None:
        seen: set[int] = set()
        keys: set[str] = set()
        for m in modalities:
            if m.key in keys:
                raise EngineError(f"request {request_id!r}: modality key {m.key!r} declared twice")
            keys.add(m.key)
            pos = [int(x) for x in m.positions]
            if not pos:
                raise EngineError(f"request {request_id!r}: modality {m.key!r} has no positions")
            bad = [x for x in pos if not 0 <= x < p]
            if bad:
                raise EngineError(f"request {request_id!r}: modality {m.key!r} position {bad[0]} "
                                  f"outside the prompt [0, {p})")
            if seen.intersection(pos) or len(set(pos)) != len(pos):
                raise EngineError(f"request {request_id!r}: modality {m.key!r} positions overlap")
            seen.update(pos)

    def _get(self, request_id: str) -> Request:
        req = self.requests.get(request_id)
        if req is None:
            raise EngineError(f"unknown request {request_id!r}")
        return req


@dataclass
class _Launched:
    """A step queued on the device: its sampling chunks (row order) and their draws."""

    chunks: list[ScheduledChunk]
    draws: DeviceSample


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor to the device without a blocking copy on CUDA (pinned staging)."""
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)
