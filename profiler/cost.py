"""What tracing costs a stage: the time one ``SpanEmitter.emit`` takes, measured with no
profiler attached and with one attached (a SpanCollector in another process, as
`autoglm profile` is), in a throw-away instance of its own.

The profiler is a passive best-effort reader, so attaching it should not change the
writer's cost much: the writer serialises and hands the sample to every matched reader's
socket either way (with none matched it only serialises). The figure reported is the
median and p99 per-call time over ``n`` calls, plus how many spans the observer received
(best-effort may drop spans under a burst; it never slows the writer).
"""
from __future__ import annotations

import multiprocessing as mp
import time
import uuid

import numpy as np


def _observe(instance: str, ready, stop, result) -> None:
    from .collect import SpanCollector

    with SpanCollector(instance, node_name="cost-observer") as col:
        col.wait_for_writers(1, timeout=10.0)
        ready.set()
        stop.wait(60.0)
        time.sleep(0.3)  # let the last samples arrive
        result.put(col.received)


def _emit_timed(em, n: int, pace_s: float) -> np.ndarray:
    t = np.empty(n, dtype=np.int64)
    now = time.perf_counter_ns
    for i in range(n):
        t0 = now()
        em.emit("bench.span", "cost", t0, t0 + 1000, i=i)
        t[i] = now() - t0
        if pace_s:
            time.sleep(pace_s)
    return t


def measure_emission_cost(n: int = 5000, pace_s: float = 0.0) -> dict:
    """Per-span emission cost in microseconds, without and with an attached profiler."""
    from control.plane import ControlPlane

    from .emit import SpanEmitter

    if n < 10:
        raise ValueError(f"need at least 10 spans to measure, got {n}")
    instance = f"cost-{uuid.uuid4().hex[:8]}"
    out = {"spans": n, "pace_s": pace_s}
    with ControlPlane(instance, "cost-emitter") as plane:
        em = SpanEmitter(plane)
        _emit_timed(em, min(n, 500), 0.0)  # warm-up: first writes allocate
        alone = _emit_timed(em, n, pace_s)
        ctx = mp.get_context("spawn")
        ready, stop, result = ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=_observe, args=(instance, ready, stop, result), daemon=True)
        proc.start()
        try:
            if not ready.wait(30.0):
                raise RuntimeError("the observer process did not attach within 30 s")
            em._writer.wait_for_readers(1, timeout=10.0)
            _emit_timed(em, min(n, 500), 0.0)
            with_obs = _emit_timed(em, n, pace_s)
            stop.set()
            received = result.get(timeout=30.0)
        finally:
            stop.set()
            proc.join(timeout=10.0)
            if proc.is_alive():
                proc.terminate()
    for key, arr in (("without_profiler", alone), ("with_profiler", with_obs)):
        us = arr / 1e3
        out[key] = {"median_us": float(np.median(us)), "mean_us": float(us.mean()),
                    "p99_us": float(np.percentile(us, 99)),
                    "spans_per_s_one_core": float(1e6 / us.mean())}
    # The observer also saw the warm-up spans written after it attached.
    out["with_profiler"]["received_by_profiler"] = int(received)
    out["with_profiler"]["written_while_attached"] = n + min(n, 500)
    return out


def format_cost(c: dict) -> str:
    a, b = c["without_profiler"], c["with_profiler"]
    return (f"span emission cost over {c['spans']} spans:\n"
            f"  no profiler attached : median {a['median_us']:.1f} us  p99 {a['p99_us']:.1f} us"
            f"  mean {a['mean_us']:.1f} us\n"
            f"  profiler attached    : median {b['median_us']:.1f} us  p99 {b['p99_us']:.1f} us"
            f"  mean {b['mean_us']:.1f} us  (received {b['received_by_profiler']} of "
            f"{b['written_while_attached']} written)")
