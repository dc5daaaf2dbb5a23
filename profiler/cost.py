"""What tracing costs a stage: the time one ``SpanEmitter.emit`` takes, measured with no
profiler attached and with one attached (a SpanCollector in another process, as
`autoglm profile` is), in a throw-away instance of its own; and per span when bundled, as the
stages emit (a write per SPANS_PER_BUNDLE spans, the flush's cost spread over them).

The profiler is a passive best-effort reader, so attaching it should not change the
writer's cost much: the writer serialises and hands the sample to every matched reader's
socket either way (with none matched it only serialises). The figure reported is the
median and p99 per-call time over ``n`` calls, plus how many spans the observer received
(best-effort may drop spans under a burst; it never slows the writer).
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import threading
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


# A text request leaves about this many spans in one stage's bundle (gateway: receive, media
# decode, shm write, first chunk, response sent, ...).
SPANS_PER_BUNDLE = 12


def _emit_bundled_timed(em, n: int) -> np.ndarray:
    """Per-span cost of a bundling emitter (as the stages run): ``n`` spans, a flush after
    every SPANS_PER_BUNDLE, each group's time (emits + its flush) spread over its spans."""
    out = []
    now = time.perf_counter_ns
    for g in range(0, n, SPANS_PER_BUNDLE):
        k = min(SPANS_PER_BUNDLE, n - g)
        t0 = now()
        for i in range(k):
            em.emit("bench.span", "cost", t0, t0 + 1000, i=g + i)
        em.flush()
        out.extend([(now() - t0) / k] * k)
    return np.asarray(out)


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
            bundled = _emit_bundled_timed(SpanEmitter(em._writer, bundle=True), n)
            stop.set()
            received = result.get(timeout=30.0)
        finally:
            stop.set()
            proc.join(timeout=10.0)
            if proc.is_alive():
                proc.terminate()
    for key, arr in (("without_profiler", alone), ("with_profiler", with_obs),
                     ("bundled_with_profiler", bundled)):
        us = arr / 1e3
        out[key] = {"median_us": float(np.median(us)), "mean_us": float(us.mean()),
                    "p99_us": float(np.percentile(us, 99)),
                    "spans_per_s_one_core": float(1e6 / us.mean())}
    # The observer also saw the warm-up spans and the bundled ones, written after it attached.
    out["with_profiler"]["received_by_profiler"] = int(received)
    out["with_profiler"]["written_while_attached"] = 2 * n + min(n, 500)
    out["bundled_with_profiler"]["spans_per_bundle"] = SPANS_PER_BUNDLE
    return out


def format_cost(c: dict) -> str:
    a, b, u = c["without_profiler"], c["with_profiler"], c["bundled_with_profiler"]
    return (f"span emission cost over {c['spans']} spans:\n"
            f"  no profiler attached : median {a['median_us']:.1f} us  p99 {a['p99_us']:.1f} us"
            f"  mean {a['mean_us']:.1f} us\n"
            f"  profiler attached    : median {b['median_us']:.1f} us  p99 {b['p99_us']:.1f} us"
            f"  mean {b['mean_us']:.1f} us  (the profiler received "
            f"{b['received_by_profiler']} of the {b['written_while_attached']} spans written "
            f"while it was attached, warm-up and bundled ones included)\n"
            f"  bundled, as stages emit (one write per {u['spans_per_bundle']} spans), profiler "
            f"attached: median {u['median_us']:.1f} us per span  mean {u['mean_us']:.1f} us")


# ------------------------------------------------------------------------------ on a live decode loop
def set_tracing(instance: str, enabled: bool, *, domain_id: int | None = None,
                settle_s: float = 1.0, then_withdraw: bool = False) -> list[bool]:
    """Switch every stage's span emission on or off (config value ``trace.enabled``, applied
    by the stage runtime between messages). Returns what the stages that answered within
    ``settle_s`` had before (each answers "applied (spans were on/off)"). ``then_withdraw``:
    the launcher keeps no value afterwards (none was set before)."""
    import json

    from control import topics as t
    from control.messages import ConfigValue
    from control.plane import ControlPlane

    from runtime.stage import TRACE_CONFIG

    with ControlPlane(instance, f"trace-switch-{uuid.uuid4().hex[:6]}",
                      domain_id=domain_id) as plane:
        answers = plane.reader(t.CONFIG_ANSWER)
        w = plane.writer(t.CONFIG)
        w.wait_for_readers(1, timeout=5.0)
        answers.wait_for_writers(1, timeout=5.0)
        rid = uuid.uuid4().hex[:12]
        w.write(ConfigValue(name=TRACE_CONFIG, request_id=rid,
                            value_json=json.dumps(bool(enabled))))
        was: dict[str, bool] = {}
        deadline = time.monotonic() + settle_s   # transient-local: stages take it on their next pass
        while time.monotonic() < deadline:
            for a in answers.take(0.05):
                if a.request_id == rid and "(spans were " in a.outcome:
                    was[a.source] = "(spans were on)" in a.outcome
        if then_withdraw:
            from launch.param_cli import withdraw

            withdraw(w, TRACE_CONFIG)
    return list(was.values())


def kept_tracing(instance: str, *, domain_id: int | None = None,
                 listen_s: float = 1.5) -> bool | None:
    """The ``trace.enabled`` value the launcher keeps for the instance (the last one set and
    applied), None when none was set (or it is not a boolean)."""
    import json

    from control import topics as t
    from control.plane import ControlPlane

    from runtime.stage import TRACE_CONFIG, config_bool

    kept = None
    with ControlPlane(instance, f"trace-read-{uuid.uuid4().hex[:6]}",
                      domain_id=domain_id) as plane:
        reader = plane.reader(t.CONFIG)
        deadline = time.monotonic() + listen_s   # the kept values arrive once discovered
        while time.monotonic() < deadline:
            for cfg in reader.take(0.1):
                if cfg.name == TRACE_CONFIG:
                    kept = cfg.value_json
    try:
        return None if kept is None else config_bool(json.loads(kept))
    except ValueError:
        return None


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM ends the measurement as Ctrl-C does, through the `finally` that switches the
    spans back (the default action would exit at once and leave them as the round left them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# The sides of the decode-cost rounds: spans off; spans on, no reader; spans on with a
# profiler attached (a SpanCollector in this process, as `autoglm profile` is).
SIDES = ("off", "spans", "profiled")


def measure_decode_cost(instance: str, base_url: str, *, rounds: int = 3, concurrency: int = 4,
                        max_tokens: int = 32, prompt_words: int = 16,
                        domain_id: int | None = None) -> dict:
    """Decode speed of a live pipeline on three sides (SIDES): what spans cost its stages, and
    what profiling costs in all (the profiler's own process takes CPU too). ``rounds`` blocks,
    each running the three sides in turn, in reversed order every other block (ABC CBA ...) so
    drift in the machine's load hits all alike. Each round sends ``concurrency`` streamed text
    requests at once; decode tokens/s of a request = 1 / TPOT (its tokens after the first over
    the time after the first). Returns the per-round figures, each side's median and range,
    its slowdown against "off", and in how many blocks it was slower than "off"."""
    import asyncio

    from benchmarks.serve import SampleRequest, _resolve_model, run_benchmark

    from .collect import SpanCollector

    if rounds < 1 or concurrency < 1 or max_tokens < 2:
        raise ValueError("need rounds >= 1, concurrency >= 1 and max_tokens >= 2")
    model = _resolve_model(base_url, None)
    words = "open the settings page and tap on wifi then scroll down to about phone".split()
    seq = 0

    def round_(side: str) -> dict:
        nonlocal seq
        said = set_tracing(instance, side != "off", domain_id=domain_id)
        if seq == 0:
            was.extend(said)
        samples = []
        for _ in range(concurrency):
            seq += 1  # distinct prompts: no prefix-cache free rides
            text = f"{seq} " + " ".join(words[(seq + k) % len(words)] for k in range(prompt_words))
            samples.append(SampleRequest([{"role": "user", "content": text}], prompt_words,
                                         max_tokens))
        profiler = SpanCollector(instance, domain_id=domain_id) if side == "profiled" else None
        try:
            if profiler is not None:
                profiler.wait_for_writers(1, timeout=5.0)
            outs, _ = asyncio.run(run_benchmark(
                base_url=base_url, endpoint="/v1/chat/completions", model=model, api_key=None,
                samples=samples, test_request=False, progress=False))
        finally:
            received = profiler.received if profiler is not None else 0
            if profiler is not None:
                profiler.close()
        # A response whose tokens all came in one chunk has no decode time to divide by.
        ok = [o for o in outs if o.success and o.output_tokens > 1 and o.latency > o.ttft]
        if not ok:
            raise RuntimeError(f"no request of the round produced 2+ tokens over time (one "
                               f"chunk each?): {[o.error for o in outs]}")
        rates = [(o.output_tokens - 1) / (o.latency - o.ttft) for o in ok]
        return {"side": side, "tracing": side != "off", "requests": len(ok),
                "decode_tokens_per_s_per_request": float(np.median(rates)),
                "output_tokens": int(sum(o.output_tokens for o in ok)),
                "spans_to_profiler": received}

    blocks = []
    was: list[bool] = []   # what the stages said they had, at the first switch
    # What was in force before, to put back afterwards (it used to be left on): the value the
    # launcher keeps, else what the stages say they had (AUTOGLM_TRACE at their start).
    kept = kept_tracing(instance, domain_id=domain_id)
    with _sigterm_unwinds():
        try:
            round_("spans")  # warm-up (first requests allocate)
            for i in range(rounds):
                order = SIDES if i % 2 == 0 else SIDES[::-1]
                blocks.append({side: round_(side) for side in order})
        finally:
            before = kept if kept is not None else (
                was.count(True) >= was.count(False) if was else True)
            # With no value kept before, none is kept after (the launcher kept the last one).
            set_tracing(instance, before, domain_id=domain_id, settle_s=0.5,
                        then_withdraw=kept is None)
    rate = {side: [b[side]["decode_tokens_per_s_per_request"] for b in blocks] for side in SIDES}
    median = {side: float(np.median(v)) for side, v in rate.items()}
    return {"instance": instance, "concurrency": concurrency, "max_tokens": max_tokens,
            "rounds": [b[side] for i, b in enumerate(blocks)
                       for side in (SIDES if i % 2 == 0 else SIDES[::-1])],
            "median_tokens_per_s": median,
            "range_tokens_per_s": {side: [min(v), max(v)] for side, v in rate.items()},
            "slowdown_percent": {side: 100.0 * (median["off"] - median[side]) / median["off"]
                                 for side in SIDES[1:]},
            # Block by block, against the "off" round next to it: drift cancels out.
            "slower_than_off_in_blocks": {
                side: [sum(b[side]["decode_tokens_per_s_per_request"]
                           < b["off"]["decode_tokens_per_s_per_request"] for b in blocks),
                       len(blocks)] for side in SIDES[1:]}}


def format_decode_cost(c: dict) -> str:
    names = {"off": "spans off", "spans": "spans on",
             "profiled": "spans on, profiler attached"}
    lines = [f"decode loop of instance {c['instance']!r}, {c['concurrency']} requests at once, "
             f"max_tokens {c['max_tokens']} (tokens/s per request, median of the round):"]
    for r in c["rounds"]:
        came = f" ({r['spans_to_profiler']} spans came)" if r["side"] == "profiled" else ""
        lines.append(f"  {r['decode_tokens_per_s_per_request']:8.1f} tok/s  "
                     f"{names[r['side']]}{came}")
    for side in SIDES:
        lo, hi = c["range_tokens_per_s"][side]
        line = (f"  {names[side]:<28} median {c['median_tokens_per_s'][side]:7.1f} tok/s "
                f"({lo:.1f}-{hi:.1f})")
        if side != "off":
            k, n = c["slower_than_off_in_blocks"][side]
            x = c["slowdown_percent"][side]
            line += (f": {abs(x):.1f}% {'slower' if x > 0 else 'faster'}, slower than spans "
                     f"off in {k} of {n} blocks")
        lines.append(line)
    return "\n".join(lines)
