"""CUDA graphs for decode-only steps.

A decode step of B sequences is replayed from a graph captured for the next larger captured
batch size and the next power-of-two block-table width, reading its inputs from static
buffers. Padding rows write their K/V into the scratch block (block 0) and attend to one
slot of it, so they cost a little compute and touch nothing of a real request. The whole
step (embedding, 40 layers, final norm, lm_head) is one replay: no Python per layer, no
host-device synchronisation until the sampled ids are read.

Graphs are captured lazily, the first time a (batch, width) bucket is needed, into one
shared memory pool; `capture(...)` captures ahead of time.
"""
from __future__ import annotations

import bisect

import torch

from .block_manager import SCRATCH_BLOCK
from .kv_cache import PagedKVCache, StepAttention

MIN_WIDTH_BLOCKS = 16


def bucket_width(width: int) -> int:
    """The graph bucket a block-table width falls in: MIN_WIDTH_BLOCKS times a power of two."""
    w = MIN_WIDTH_BLOCKS
    while w < width:
        w *= 2
    return w


class DecodeGraphRunner:
    def __init__(self, model, cache: PagedKVCache, batch_sizes, max_blocks_per_seq: int,
                 compile: bool = False):
        self.model = model
        # torch.compile (Inductor) fuses the many small element-wise kernels of a layer
        # (fp32 norms, rope, SwiGLU) that otherwise dominate a batch-1 decode step; the
        # compiled code is then captured into the same graphs.
        self._body = self._forward_body
        if compile:
            from torch import _dynamo
            _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
            # dynamic=None: the second bucket recompiles once with symbolic batch / width,
            # which then serves every other bucket.
            self._body = torch.compile(self._forward_body)
        self.cache = cache
        self.batch_sizes = sorted(set(int(b) for b in batch_sizes))
        self.widths = []
        w = MIN_WIDTH_BLOCKS
        while True:
            self.widths.append(w)
            if w >= max_blocks_per_seq:
                break
            w *= 2
        dev = cache.device
        bmax, wmax = self.batch_sizes[-1], self.widths[-1]
        # One int64 staging row per input so a step's inputs go over in one copy:
        # ids, positions t/h/w, slot, context length.
        self.inputs = torch.zeros(6, bmax, dtype=torch.long, device=dev)
        self.block_table = torch.zeros(bmax, wmax, dtype=torch.long, device=dev)
        # Two pinned staging areas used in turn: with overlapped decode the next step's
        # inputs are written while the previous step (and maybe its input copy) is queued.
        self._staging = [_Staging(bmax, wmax) for _ in range(2)]
        self._turn = 0
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None

    def bucket(self, batch: int, width: int) -> tuple[int, int] | None:
        i = bisect.bisect_left(self.batch_sizes, batch)
        j = bisect.bisect_left(self.widths, width)
        if i == len(self.batch_sizes) or j == len(self.widths):
            return None
        return self.batch_sizes[i], self.widths[j]

    def try_run(self, ids, positions, slots, block_tables, context_lens) -> torch.Tensor | None:
        """Logits [B, V] for a decode step, or None when no bucket fits (run eagerly).

        ids: a host list, or a device tensor (a chained step's inputs, never read on the host).
        """
        b = len(ids)
        width = max(len(t) for t in block_tables)
        bucket = self.bucket(b, width)
        if bucket is None:
            return None
        bp, wp = bucket
        staging = self._staging[self._turn]
        self._turn ^= 1
        staging.copied.synchronize()    # its copy of two steps ago has left (at once, usually)
        host, table = staging.host, staging.table
        host[:, :bp].zero_()
        host[1:4, :b] = positions
        on_device = isinstance(ids, torch.Tensor)
        if not on_device:
            host[0, :b] = torch.tensor(ids)
        host[4, :bp] = SCRATCH_BLOCK * self.cache.block_size
        host[4, :b] = torch.tensor(slots)
        host[5, :bp] = 1
        host[5, :b] = torch.tensor(context_lens)
        table[:bp, :wp].zero_()
        for i, blocks in enumerate(block_tables):
            table[i, :len(blocks)] = torch.tensor(blocks)
        self.inputs[:, :bp].copy_(host[:, :bp], non_blocking=True)
        self.block_table[:bp, :wp].copy_(table[:bp, :wp], non_blocking=True)
        staging.copied.record()
        if on_device:
            self.inputs[0, :b].copy_(ids)
        graph, out = self._graph(bp, wp)
        graph.replay()
        return out[:b]

    @torch.inference_mode()
    def capture(self, batch_sizes=None, widths=None) -> None:
        """Capture ahead of time (largest first, so smaller graphs reuse the pool)."""
        # Harmless inputs for the warm-up run: every row writes to and reads one scratch slot.
        self.inputs.zero_()
        self.inputs[4] = SCRATCH_BLOCK * self.cache.block_size
        self.inputs[5] = 1
        self.block_table.zero_()
        for bp in sorted(batch_sizes or self.batch_sizes, reverse=True):
            for wp in sorted(widths or self.widths[:1], reverse=True):
                self._graph(bp, wp)

    def _forward(self, bp: int, wp: int) -> torch.Tensor:
        return self._body(self.inputs[:, :bp], self.block_table[:bp, :wp])

    def _forward_body(self, inputs: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        ids, positions, slots, lens = inputs[0], inputs[1:4], inputs[4], inputs[5]
        attn = StepAttention(self.cache, slots, decode_block_table=table,
                             decode_context_lens=lens)
        hidden = self.model.forward(self.model.embed(ids), positions, attn)
        return self.model.logits(hidden)

    @torch.inference_mode()
    def _graph(self, bp: int, wp: int):
        key = (bp, wp)
        if key in self.graphs:
            return self.graphs[key]
        # Warm up on a side stream (cuBLAS handles, allocator) as graph capture requires.
        # The inputs already hold this step's real values, so the warm-up's K/V writes are
        # the same ones the replay makes.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            # Twice: a compiled body may compile, then settle its guards, on the first calls.
            for _ in range(2):
                self._forward(bp, wp)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._forward(bp, wp)
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[key] = (graph, out)
        return graph, out


class _Staging:
    """Pinned host rows for one step's inputs, and an event marking their copy's departure."""

    def __init__(self, bmax: int, wmax: int):
        self.host = torch.zeros(6, bmax, dtype=torch.long).pin_memory()
        self.table = torch.zeros(bmax, wmax, dtype=torch.long).pin_memory()
        self.copied = torch.cuda.Event()
