"""Statistics over spans: per stage, per hop between stages, per request.

* Per span name ("stage"): count and p50/p90/p99/max of the span durations. Instants (marks)
  are counted; their duration is 0.
* Per hop: the time a request spends between two processes. For each span B of a request,
  its predecessor A is the span of *another* process that ended last at or before B began; the
  pair is a hop "A -> B" if B is the first span of its process to begin after A ended (so a
  hop is the wake-up of the next stage, not every later span of it). Gap = B.start - A.end.
  Spans a request leaves many of (one per output token) take part in no hop. Timing alone
  cannot tell parallel branches apart: a stage woken by the gateway is attributed to a
  sibling (say audio) when that sibling's span ended between the gateway's and its own start.
* Per request: end-to-end (gateway.receive start .. gateway.response_sent end, else first
  start .. last end), model compute (the union of the COMPUTE_SPANS intervals, so overlapping
  vision and audio are not counted twice) and the pipeline's own overhead = end-to-end -
  compute.

Percentiles interpolate linearly between order statistics (numpy's default, as vLLM's
benchmark uses).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .spans import COMPUTE_SPANS, GATEWAY_RECEIVE, GATEWAY_RESPONSE_SENT, PREPROCESS_SPANS, \
    REPEATED_SPANS, SHM_HANDOFF_SPANS, Span

DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


@dataclass(frozen=True)
class Summary:
    """Latencies of one row, in milliseconds."""

    count: int
    mean_ms: float
    max_ms: float
    percentiles_ms: dict  # {50.0: ms, 90.0: ms, ...}

    def p(self, q: float) -> float:
        return self.percentiles_ms[float(q)]

    def to_json_obj(self) -> dict:
        d = {"count": self.count, "mean_ms": self.mean_ms, "max_ms": self.max_ms}
        for q, v in self.percentiles_ms.items():
            d[f"p{_qname(q)}_ms"] = v
        return d


def _qname(q: float) -> str:
    return str(int(q)) if float(q).is_integer() else str(q)


def summarize_ns(values_ns: Sequence[int], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Summary:
    if len(values_ns) == 0:
        return Summary(0, 0.0, 0.0, {float(q): 0.0 for q in percentiles})
    a = np.asarray(values_ns, dtype=np.float64) / 1e6
    return Summary(len(a), float(a.mean()), float(a.max()),
                   {float(q): float(np.percentile(a, q)) for q in percentiles})


def by_request(spans: Iterable[Span]) -> dict[str, list[Span]]:
    out: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        out[s.request_id].append(s)
    for v in out.values():
        v.sort(key=lambda s: (s.start_ns, s.end_ns))
    return dict(out)


# ------------------------------------------------------------------------------ stages
def stage_durations(spans: Iterable[Span]) -> dict[str, list[int]]:
    """Durations per span name, names in the order they first occur (pipeline order)."""
    out: dict[str, list[int]] = {}
    for s in sorted(spans, key=lambda s: s.start_ns):
        out.setdefault(s.name, []).append(s.duration_ns)
    return out


def stage_table(spans: Iterable[Span], percentiles=DEFAULT_PERCENTILES) -> dict[str, Summary]:
    return {name: summarize_ns(d, percentiles) for name, d in stage_durations(spans).items()}


# ------------------------------------------------------------------------------ hops
def request_hops(spans: Sequence[Span]) -> list[tuple[str, int]]:
    """(hop name, gap ns) of one request's spans (see module doc)."""
    steps = [s for s in spans if not _bookkeeping(s.name)]
    flow = [s for s in steps if s.name not in REPEATED_SPANS]
    hops = []
    for b in flow:
        pred = None
        for a in flow:
            if a.source != b.source and a.end_ns <= b.start_ns and (
                    pred is None or a.end_ns > pred.end_ns):
                pred = a
        if pred is None:
            continue
        # Spans left many times count here: a decode step after pred means the decision
        # stage was already at work, and its last_token mark is no reaction to pred.
        earlier_reaction = any(s.source == b.source and pred.end_ns <= s.start_ns < b.start_ns
                               for s in steps)
        if not earlier_reaction:
            hops.append((f"{pred.name} -> {b.name}", b.start_ns - pred.end_ns))
    return hops


def hop_gaps(spans: Iterable[Span]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for req_spans in by_request(spans).values():
        for name, gap in request_hops(req_spans):
            out[name].append(gap)
    return dict(out)


def hop_table(spans: Iterable[Span], percentiles=DEFAULT_PERCENTILES) -> dict[str, Summary]:
    return {name: summarize_ns(g, percentiles) for name, g in sorted(hop_gaps(spans).items())}


# ------------------------------------------------------------------------------ requests
def union_ns(intervals: Iterable[tuple[int, int]]) -> int:
    """Total length of the union of [start, end) intervals."""
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


@dataclass(frozen=True)
class RequestTiming:
    request_id: str
    e2e_ns: int
    compute_ns: int
    shm_handoff_ns: tuple  # durations of its shm hand-off spans
    complete: bool  # both gateway.receive and gateway.response_sent were seen
    busy_ns: int = 0  # union of compute and preprocessing (media decode) intervals

    @property
    def overhead_ns(self) -> int:
        return self.e2e_ns - self.compute_ns

    @property
    def overhead_excl_preprocess_ns(self) -> int:
        return self.e2e_ns - max(self.busy_ns, self.compute_ns)


def request_timing(request_id: str, spans: Sequence[Span]) -> RequestTiming:
    if not spans:
        raise ValueError(f"no spans for request {request_id!r}")
    recv = [s for s in spans if s.name == GATEWAY_RECEIVE]
    sent = [s for s in spans if s.name == GATEWAY_RESPONSE_SENT]
    start = min(s.start_ns for s in recv) if recv else min(s.start_ns for s in spans)
    end = max(s.end_ns for s in sent) if sent else max(s.end_ns for s in spans)
    compute = union_ns((s.start_ns, s.end_ns) for s in spans if s.name in COMPUTE_SPANS)
    handoffs = tuple(s.duration_ns for s in spans if s.name in SHM_HANDOFF_SPANS)
    busy = union_ns((s.start_ns, s.end_ns) for s in spans
                    if s.name in COMPUTE_SPANS or s.name in PREPROCESS_SPANS)
    return RequestTiming(request_id, end - start, compute, handoffs, bool(recv and sent), busy)


def overhead_report(spans: Iterable[Span], percentiles=DEFAULT_PERCENTILES,
                    request_ids: Iterable[str] | None = None) -> dict:
    """The pipeline's own overhead per request (end-to-end minus model compute) and the
    shm hand-off durations, over ``request_ids`` (default: every request seen)."""
    groups = by_request(spans)
    ids = list(groups) if request_ids is None else [r for r in request_ids if r in groups]
    timings = [request_timing(r, groups[r]) for r in ids if r]
    handoffs = [h for t in timings for h in t.shm_handoff_ns]
    return {
        "requests": len(timings),
        "complete_requests": sum(t.complete for t in timings),
        "e2e": summarize_ns([t.e2e_ns for t in timings], percentiles).to_json_obj(),
        "compute": summarize_ns([t.compute_ns for t in timings], percentiles).to_json_obj(),
        "overhead": summarize_ns([t.overhead_ns for t in timings], percentiles).to_json_obj(),
        # The same without preprocessing (the gateway's decoding and tokenising, the resize).
        "overhead_excl_preprocess": summarize_ns(
            [t.overhead_excl_preprocess_ns for t in timings], percentiles).to_json_obj(),
        "shm_handoff": summarize_ns(handoffs, percentiles).to_json_obj(),
        "shm_handoff_by_span": {name: s.to_json_obj() for name, s in stage_table(
            [s for r in ids for s in groups[r] if s.name in SHM_HANDOFF_SPANS],
            percentiles).items()},
        "overhead_by_place": _breakdown(groups, ids),
    }


def request_breakdown(spans: Sequence[Span]) -> list[dict]:
    """Rows describing where one request's time went, in start order: offset from the first
    span's start, duration, and the gap since the earlier spans ended (ms; 0 when one of them
    still ran). A stage's hold of the request ("decision.done") spans the finer ones it
    covers: it sets no gap, which would read as negative for each of them."""
    if not spans:
        return []
    spans = sorted(spans, key=lambda s: (s.start_ns, s.end_ns))
    t0 = spans[0].start_ns
    rows, last_end = [], None
    for s in spans:
        rows.append({"name": s.name, "source": s.source, "pid": s.pid,
                     "offset_ms": (s.start_ns - t0) / 1e6, "duration_ms": s.duration_ns / 1e6,
                     "gap_ms": None if last_end is None else max(0, s.start_ns - last_end) / 1e6,
                     "attrs": s.attrs})
        if not _bookkeeping(s.name):
            last_end = s.end_ns if last_end is None else max(last_end, s.end_ns)
    return rows


# ------------------------------------------------------------------------------ where overhead goes
def _bookkeeping(name: str) -> bool:
    """The stage runtime's own spans (a stage's hold of a request: "vision.done"), which
    cover work already described by finer spans."""
    return name.rsplit(".", 1)[-1] in ("done", "error", "cancelled")


def overhead_segments(spans: Sequence[Span]) -> dict[str, int]:
    """One request's overhead (its end-to-end time not covered by model compute), split by
    where it was spent, in ns: ``"in X"`` inside a non-compute span X (media decode, an shm
    write, admission wait), ``"A -> B"`` between spans (hand-offs between processes, the
    gap between two decode steps, ...). The parts add up to ``request_timing().overhead_ns``."""
    flow = sorted((s for s in spans if not _bookkeeping(s.name)),
                  key=lambda s: (s.start_ns, s.end_ns))
    if not flow:
        return {}
    t = request_timing(flow[0].request_id, flow)
    recv = [s for s in flow if s.name == GATEWAY_RECEIVE]
    sent = [s for s in flow if s.name == GATEWAY_RESPONSE_SENT]
    lo = min(s.start_ns for s in recv) if recv else flow[0].start_ns
    hi = max(s.end_ns for s in sent) if sent else max(s.end_ns for s in flow)
    cuts = sorted({lo, hi, *(x for s in flow for x in (s.start_ns, s.end_ns) if lo <= x <= hi)})
    compute = [s for s in flow if s.name in COMPUTE_SPANS]
    other = [s for s in flow if s.name not in COMPUTE_SPANS and not s.instant]
    out: dict[str, int] = defaultdict(int)
    for a, b in zip(cuts, cuts[1:]):
        if any(s.start_ns <= a and b <= s.end_ns for s in compute):
            continue
        inside = [s for s in other if s.start_ns <= a and b <= s.end_ns]
        if inside:
            # Work (preprocessing) before waits that overlap it (an admission waiting for
            # the vision stage's resize), else the innermost: the latest to start.
            label = "in " + max(inside, key=lambda s: (s.name in PREPROCESS_SPANS,
                                                       s.start_ns)).name
        else:
            before = max((s for s in flow if s.end_ns <= a), key=lambda s: s.end_ns, default=None)
            after = min((s for s in flow if s.start_ns >= b), key=lambda s: s.start_ns,
                        default=None)
            label = f"{before.name if before else 'start'} -> {after.name if after else 'end'}"
        out[label] += b - a
    assert t.e2e_ns >= 0
    return dict(out)


def overhead_breakdown(spans: Iterable[Span], request_ids: Iterable[str] | None = None) -> dict:
    """Overhead per request by where it went, over the requests with a complete
    receive..response_sent span pair: the mean (ms; the means add up to the mean overhead)
    and the median (a place a request did not pass counts 0 for it), largest mean first.
    The median is the typical request's; a mean above it says a few requests waited there,
    e.g. behind another request's model step. (overhead_report holds it too.)"""
    groups = by_request(spans)
    return _breakdown(groups, list(groups) if request_ids is None else request_ids)


def _breakdown(groups: dict[str, list[Span]], request_ids: Iterable[str]) -> dict:
    done = [r for r in request_ids if r and r in groups and request_timing(r, groups[r]).complete]
    per_place: dict[str, list[int]] = defaultdict(list)
    for r in done:
        for k, v in overhead_segments(groups[r]).items():
            per_place[k].append(v)
    n = max(1, len(done))
    order = sorted(per_place, key=lambda k: -sum(per_place[k]))
    return {"requests": len(done),
            "mean_ms": {k: sum(per_place[k]) / n / 1e6 for k in order},
            "p50_ms": {k: float(np.median(per_place[k] + [0] * (n - len(per_place[k])))) / 1e6
                       for k in order}}
