"""Which requests run in the next step, and how many of their tokens.

Every running request needs its tokens [num_computed, num_tokens) computed: one token for a
decoding request, a chunk of the prompt for a prefilling one (chunked prefill, bounded by the
step's token budget). Decodes go first so that long prompts never stall running streams.
When the cache runs out of blocks, the most recently admitted request is preempted: its
blocks are freed and it is recomputed later (its generated tokens kept).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .block_manager import BlockManager
from .request import Request, RequestStatus


@dataclass
class ScheduledChunk:
    request: Request
    start: int          # first token index computed this step
    num_new: int
    # Queued before its input token was read (the engine's overlapped decode): it extends
    # the sequence by that token, so it samples though num_tokens does not count it yet.
    chained: bool = False

    @property
    def end(self) -> int:
        return self.start + self.num_new

    @property
    def samples(self) -> bool:
        """The chunk reaches the last known token, so its last row yields a new token."""
        return self.chained or self.end == self.request.num_tokens

    @property
    def is_decode(self) -> bool:
        """One row after computed ones: attended as a decode (a generated token, or a prompt's
        last row past a cached prefix or a chunk boundary)."""
        return self.num_new == 1 and self.start > 0

    @property
    def has_given_rows(self) -> bool:
        """Covers prompt rows whose embeddings may come from elsewhere than the token table
        (an image's or audio's, or the request's inputs_embeds)."""
        r = self.request
        return self.start < r.num_prompt and (r.inputs_embeds is not None
                                              or bool(r.modality_positions))


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = blocks
        self.block_size = blocks.block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def remove(self, req: Request) -> None:
        """Take a request out (finished or cancelled) and free its blocks."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self.blocks.free(req.blocks)
        req.blocks = []

    def schedule(self) -> list[ScheduledChunk]:
        budget = self.max_num_batched_tokens
        decodes: list[ScheduledChunk] = []
        prefills: list[ScheduledChunk] = []
        for req in list(self.running):
            if req.status is not RequestStatus.RUNNING or budget == 0:
                continue
            n = min(req.num_tokens - req.num_computed, budget)
            if not self._grow(req, req.num_computed + n):
                continue
            chunk = ScheduledChunk(req, req.num_computed, n)
            (decodes if chunk.is_decode else prefills).append(chunk)
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            if not req.blocks:
                self._take_cached_prefix(req)
            n = min(req.num_tokens - req.num_computed, budget)
            need = self._blocks_for(req.num_computed + n) - len(req.blocks)
            if need > self.blocks.num_available():
                if not self.running and not decodes and not prefills:
                    # Nothing will free blocks: admit a smaller chunk rather than stall.
                    n = (len(req.blocks) + self.blocks.num_available()) * self.block_size \
                        - req.num_computed
                    if n <= 0:
                        self._release_cached_prefix(req)
                        break
                else:
                    self._release_cached_prefix(req)
                    break
            self.waiting.popleft()
            self._allocate(req, req.num_computed + n)
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            # One row past a cached prefix is decode-shaped: it goes with the decodes, whose
            # rows the step lays out first (the attention reads them by that order).
            chunk = ScheduledChunk(req, req.num_computed, n)
            (decodes if chunk.is_decode else prefills).append(chunk)
            budget -= n
        return decodes + prefills

    # --- blocks --------------------------------------------------------------------------------
    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _take_cached_prefix(self, req: Request) -> None:
        """Reuse cached full blocks of the request's prefix; at least one token stays to compute."""
        if not req.cacheable:
            return
        max_blocks = (req.num_tokens - 1) // self.block_size
        keys = req.block_keys(max_blocks)
        hits = self.blocks.lookup(keys)
        req.blocks = hits
        req.num_computed = len(hits) * self.block_size
        req.num_registered = len(hits)
        req.cached_prompt_tokens = max(req.cached_prompt_tokens,
                                       min(req.num_computed, req.num_prompt))

    def _release_cached_prefix(self, req: Request) -> None:
        # A request left waiting must not sit on blocks the running ones may need.
        self.blocks.free(req.blocks)
        req.blocks = []
        req.num_computed = 0
        req.num_registered = 0

    def _allocate(self, req: Request, upto_tokens: int) -> None:
        for _ in range(self._blocks_for(upto_tokens) - len(req.blocks)):
            req.blocks.append(self.blocks.allocate())

    def reserve(self, req: Request, upto_tokens: int) -> bool:
        """Give `req` blocks up to `upto_tokens` if free ones suffice (no preemption)."""
        if self._blocks_for(upto_tokens) - len(req.blocks) > self.blocks.num_available():
            return False
        self._allocate(req, upto_tokens)
        return True

    def _grow(self, req: Request, upto_tokens: int) -> bool:
        """Give `req` blocks up to `upto_tokens`, preempting later requests; False if it was
        preempted itself."""
        need = self._blocks_for(upto_tokens) - len(req.blocks)
        while need > self.blocks.num_available():
            victim = self.running[-1]
            self.preempt(victim)
            if victim is req:
                return False
        self._allocate(req, upto_tokens)
        return True

    def preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.blocks.free(req.blocks)
        req.blocks = []
        req.num_computed = 0
        req.num_registered = 0
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)
        self.num_preemptions += 1
