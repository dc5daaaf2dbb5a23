"""Chrome / Perfetto trace-event export (the JSON "Trace Event Format").

One process per pipeline process: a metadata event names it after its node ("vision (pid
1234)"). Its spans lie on thread tracks (lanes) where the slices of every track nest
perfectly, which the viewers require: slices of one track that overlap partially (two
requests received at once, ``decision.admission`` starting before the request's
``decision.done`` and ending inside it) are drawn wrongly or dropped. Each span goes on the
first lane it nests in, a new lane only where it nests in none, so a process whose spans
nest has one track, ``tid`` = its pid, named after the node; further lanes are "vision 2",
"vision 3", ... in that order (thread_sort_index). A mark nests anywhere: the first lane.
Timestamps are microseconds (floats keep the nanoseconds) relative to the earliest span, so
the viewer starts at 0; the absolute CLOCK_MONOTONIC origin is kept in ``otherData``. Spans
with a duration are complete events (``ph: "X"``), instants are thread-scoped instant
events (``ph: "i"``).

Load the file in https://ui.perfetto.dev or chrome://tracing.
"""
from __future__ import annotations

import json
import os
from typing import Iterable

from .spans import Span


def _lane(lanes: list[list[int]], s: Span) -> int:
    """The first lane where span ``s`` nests, given spans come in (start, -end) order; each
    lane is the stack of the ends of its open slices, innermost last."""
    for i, stack in enumerate(lanes):
        # Spans come in start order, so a slice ended by now is closed for every later one.
        while stack and stack[-1] <= s.start_ns:
            stack.pop()
        if not stack or s.end_ns <= stack[-1]:
            stack.append(s.end_ns)
            return i
    lanes.append([s.end_ns])
    return len(lanes) - 1


def trace_events(spans: Iterable[Span]) -> dict:
    # Longest first among equal starts: an enclosing slice must open before what it holds
    # (and the viewers draw slices of equal start in file order).
    spans = sorted(spans, key=lambda s: (s.start_ns, -s.end_ns))
    origin = spans[0].start_ns if spans else 0
    events: list[dict] = []
    processes: dict[int, str] = {}
    lanes: dict[int, list[list[int]]] = {}
    tids: dict[tuple[int, int], int] = {}
    # Tids of further lanes lie above every pid, so no track of one process takes the id of
    # another process's first track (Perfetto keys threads by tid).
    next_tid = max((s.pid for s in spans), default=0) + 1
    for s in spans:
        processes.setdefault(s.pid, s.source)
        lane = _lane(lanes.setdefault(s.pid, []), s)
        if lane == 0:
            tids[(s.pid, 0)] = s.pid
        elif (s.pid, lane) not in tids:
            tids[(s.pid, lane)] = next_tid
            next_tid += 1
        ev = {"name": s.name, "cat": s.stage, "pid": s.pid, "tid": tids[(s.pid, lane)],
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
        for lane in range(len(lanes[pid])):
            tid = tids[(pid, lane)]
            meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "ts": 0,
                         "args": {"name": source if lane == 0 else f"{source} {lane + 1}"}})
            meta.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "ts": 0,
                         "args": {"sort_index": lane}})
    return {"traceEvents": meta + events, "displayTimeUnit": "ms",
            "otherData": {"clock": "CLOCK_MONOTONIC", "origin_mono_ns": origin,
                          "spans": len(spans)}}


def write_trace(path: str | os.PathLike, spans: Iterable[Span]) -> int:
    """Write the trace file; returns the number of span events written."""
    doc = trace_events(spans)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
    return doc["otherData"]["spans"]
