"""Latency profiler: trace spans of every request, collected from the control plane.

    profiler.spans      Span (plain record), the span names, stage_of()
    profiler.emit       SpanEmitter / emit_span(): how stages write spans
    profiler.collect    SpanCollector: passive reader of a live instance's trace topic
    profiler.recording  JSON-lines recording files (--record / --input)
    profiler.stats      per-stage, per-hop, per-request statistics and pipeline overhead
    profiler.perfetto   Chrome / Perfetto trace-event export
    profiler.cost       what emission costs, with and without a profiler attached
    profiler.cli        `autoglm profile`

Submodules are imported where used (no DDS import on `import profiler`).
"""
