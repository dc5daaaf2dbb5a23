"""Text rendering of the profiler's tables (terminal, live or once)."""
from __future__ import annotations

from typing import Sequence

from .stats import DEFAULT_PERCENTILES, Summary, _qname

CLEAR = "\x1b[H\x1b[2J"  # cursor home + clear screen: a live refresh without curses


def latency_table(title: str, rows: dict[str, Summary],
                  percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> str:
    if not rows:
        return f"{title}: (none yet)"
    width = max(len(title), *(len(k) for k in rows)) + 2
    head = f"{title:<{width}}{'count':>8}" + "".join(
        f"{'p' + _qname(q):>10}" for q in percentiles) + f"{'max':>10}"
    lines = [head, "-" * len(head)]
    for name, s in rows.items():
        lines.append(f"{name:<{width}}{s.count:>8}" + "".join(
            f"{s.p(q):>10.3f}" for q in percentiles) + f"{s.max_ms:>10.3f}")
    return "\n".join(lines)


def breakdown_table(request_id: str, rows: list[dict]) -> str:
    if not rows:
        return f"request {request_id}: no spans"
    total = max(r["offset_ms"] + r["duration_ms"] for r in rows)
    lines = [f"request {request_id}: {len(rows)} spans over {total:.3f} ms (times in ms)",
             f"{'offset':>10}{'duration':>10}{'gap':>10}  {'span':<26}{'process':<20}timeline"]
    bar_w = 40
    for r in rows:
        gap = "" if r["gap_ms"] is None else f"{r['gap_ms']:.3f}"
        a = int(bar_w * r["offset_ms"] / total) if total else 0
        b = max(1, int(bar_w * r["duration_ms"] / total)) if total else 1
        bar = " " * a + ("#" * b if r["duration_ms"] else "|")
        proc = f"{r['source']}({r['pid']})"
        lines.append(f"{r['offset_ms']:>10.3f}{r['duration_ms']:>10.3f}{gap:>10}  "
                     f"{r['name']:<26}{proc:<20}{bar}")
    return "\n".join(lines)


def overhead_lines(report: dict) -> str:
    if not report["requests"]:
        return "pipeline overhead: no requests"
    o, c, e, h = report["overhead"], report["compute"], report["e2e"], report["shm_handoff"]
    out = [f"pipeline overhead over {report['requests']} requests "
           f"({report['complete_requests']} with gateway receive..response spans):",
           f"  end-to-end   p50 {e['p50_ms']:.3f} ms  p99 {e['p99_ms']:.3f} ms",
           f"  compute      p50 {c['p50_ms']:.3f} ms  p99 {c['p99_ms']:.3f} ms",
           f"  overhead     p50 {o['p50_ms']:.3f} ms  p99 {o['p99_ms']:.3f} ms  "
           f"mean {o['mean_ms']:.3f} ms"]
    x = report.get("overhead_excl_preprocess")
    if x is not None:
        out.append(f"  without preprocessing p50 {x['p50_ms']:.3f} ms  p99 {x['p99_ms']:.3f} ms"
                   f"  mean {x['mean_ms']:.3f} ms")
    if h["count"]:
        out.append(f"  shm hand-off p50 {h['p50_ms'] * 1e3:.1f} us  p99 {h['p99_ms'] * 1e3:.1f} us"
                   f"  ({h['count']} hand-offs)")
    places = report.get("overhead_by_place")
    if places and places["requests"]:
        out += place_lines(places)
    return "\n".join(out)


def place_lines(places: dict, shown: int = 8) -> list[str]:
    """Where the overhead went, largest mean first: "in X" inside a span that is not model
    compute, "A -> B" between two spans (a hand-off, the gap between two decode steps)."""
    means, medians = places["mean_ms"], places["p50_ms"]
    names = list(means)
    if not names:
        return []
    width = max(len(k) for k in names[:shown + 1])
    out = [f"  where it goes, per request {'':{max(0, width - 23)}s}  mean       p50"]
    out += [f"    {k:{width}s} {means[k]:7.3f} ms {medians[k]:7.3f} ms" for k in names[:shown]]
    rest = names[shown:]
    if rest:
        label = f"{len(rest)} more places"
        out.append(f"    {label:{width}s} {sum(means[k] for k in rest):7.3f} ms")
    return out
