"""Chrome / Perfetto trace-event export (the JSON "Trace Event Format").

One track per process: every span becomes an event with ``pid`` = the process id and
``tid`` = the same id, and a metadata event names the process after its node ("vision
(pid 1234)"). Timestamps are microseconds (floats keep the nanoseconds) relative to the
earliest span, so the viewer starts at 0; the absolute CLOCK_MONOTONIC origin is kept in
``otherData``. Spans with a duration are complete events (``ph: "X"``), instants are
thread-scoped instant events (``ph: "i"``). Overlapping spans of one process (two requests
decoded in one batch) nest or overlap on the track as the viewer draws them.

Load the file in https://ui.perfetto.dev or chrome://tracing.
"""
from __future__ import annotations

import json
import os
from typing import Iterable

from .spans import Span


def trace_events(spans: Iterable[Span]) -> dict:
    spans = sorted(spans, key=lambda s: (s.start_ns, s.end_ns))
    origin = spans[0].start_ns if spans else 0
    events: list[dict] = []
    processes: dict[int, str] = {}
    for s in spans:
        processes.setdefault(s.pid, s.source)
        ev = {"name": s.name, "cat": s.stage, "pid": s.pid, "tid": s.pid,
              "ts": (s.start_ns - origin) / 1e3,
              "args": {"request_id": s.request_id, **s.attrs}}
        if s.instant:
            ev["ph"] = "i"
            ev["s"] = "t"
        else:
            ev["ph"] = "X"
            ev["dur"] = s.duration_ns / 1e3
        events.append(ev)
    meta = []
    for pid, source in sorted(processes.items()):
        meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": pid, "ts": 0,
                     "args": {"name": f"{source} (pid {pid})"}})
        meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": pid, "ts": 0,
                     "args": {"name": source}})
    return {"traceEvents": meta + events, "displayTimeUnit": "ms",
            "otherData": {"clock": "CLOCK_MONOTONIC", "origin_mono_ns": origin,
                          "spans": len(spans)}}


def write_trace(path: str | os.PathLike, spans: Iterable[Span]) -> int:
    """Write the trace file; returns the number of span events written."""
    doc = trace_events(spans)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
    return doc["otherData"]["spans"]
