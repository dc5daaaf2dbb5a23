"""Statistics, recording format, the Perfetto export and the emitter, on real spans (the emitter over real DDS)."""
from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest
from conftest import unique_instance

from profiler.perfetto import trace_events, write_trace
from profiler.recording import read_recording, write_recording
from profiler.spans import Span
from profiler.stats import overhead_breakdown, overhead_report, overhead_segments, request_breakdown, \
    request_hops, request_timing, summarize_ns, union_ns

MS = 1_000_000


def sp(name, source, start_ms, end_ms, rid="r", pid=None):
    return Span(rid, name, source, pid or hash(source) % 10000, int(start_ms * MS), int(end_ms * MS))


def test_summary_percentiles_are_numpy_linear():
    vals = list(np.random.default_rng(0).integers(1, 10**8, size=101))
    s = summarize_ns(vals, (50, 90, 99))
    for q in (50, 90, 99):
        assert s.p(q) == pytest.approx(np.percentile(np.array(vals) / 1e6, q))
    assert s.max_ms == pytest.approx(max(vals) / 1e6) and s.count == 101
    assert summarize_ns([]).count == 0


def test_union_counts_overlap_once():
    assert union_ns([(0, 10), (5, 20), (30, 40)]) == 30
    assert union_ns([]) == 0


def test_hops_pair_each_stage_with_what_woke_it():
    # admission lasts while decision waits for the modalities (as the stage defines it).
    spans = [sp("gateway.shm_write", "gateway", 0, 1), sp("vision.encode", "vision", 2, 10),
             sp("audio.encode", "audio", 1.5, 6), sp("decision.admission", "decision", 1.2, 10.4),
             sp("decision.prefill", "decision", 10.5, 20), sp("decision.token", "decision", 20, 25),
             sp("gateway.response_sent", "gateway", 26, 27)]
    hops = dict(request_hops(spans))
    assert hops["gateway.shm_write -> vision.encode"] == 1 * MS
    assert hops["gateway.shm_write -> audio.encode"] == int(0.5 * MS)
    assert hops["gateway.shm_write -> decision.admission"] == int(0.2 * MS)
    # prefill waited for the later of vision and audio: vision.
    assert hops["vision.encode -> decision.prefill"] == int(0.5 * MS)
    # token spans take part in no hop; the response follows the prefill's hop chain.
    assert "decision.prefill -> gateway.response_sent" in hops
    assert not any("decision.token" in h for h in hops)


def test_decode_steps_between_two_spans_make_no_hop_of_them():
    """A streamed request: the gateway's first_chunk mark, then the decode steps, then the
    last_token mark. last_token is no reaction to first_chunk (the table showed the decode
    time as the hop 'gateway.first_chunk -> decision.last_token')."""
    spans = [sp("decision.prefill", "decision", 0, 10),
             sp("decision.first_token", "decision", 10.05, 10.05),
             sp("gateway.first_chunk", "gateway", 10.3, 10.3),
             *(sp("decision.token", "decision", 10 + 3 * i, 13 + 3 * i) for i in range(5)),
             sp("decision.last_token", "decision", 25, 25),
             sp("gateway.response_sent", "gateway", 25.2, 25.4)]
    hops = dict(request_hops(spans))
    assert "gateway.first_chunk -> decision.last_token" not in hops
    assert hops["decision.first_token -> gateway.first_chunk"] == int(0.25 * MS)
    assert hops["decision.last_token -> gateway.response_sent"] == int(0.2 * MS)


def test_request_breakdown_gaps_are_never_negative():
    """A stage's hold of the request (decision.done) covers the spans after it: the gap of
    each is from the finer spans' ends (it read -73 ms, -44 ms, ...), and one that began while
    another still ran has gap 0."""
    spans = [sp("gateway.receive", "gateway", 0, 1), sp("decision.done", "decision", 1.1, 30),
             sp("decision.admission", "decision", 1.2, 2), sp("vision.encode", "vision", 1.5, 5),
             sp("decision.prefill", "decision", 5.5, 20), sp("gateway.response_sent", "gateway", 30.5, 31)]
    gaps = {r["name"]: r["gap_ms"] for r in request_breakdown(spans)}
    assert gaps["gateway.receive"] is None
    assert gaps["decision.done"] == pytest.approx(0.1)
    assert gaps["decision.admission"] == pytest.approx(0.2)
    assert gaps["vision.encode"] == 0          # admission still ran
    assert gaps["decision.prefill"] == pytest.approx(0.5)
    assert gaps["gateway.response_sent"] == pytest.approx(10.5)


def test_overhead_is_e2e_minus_compute_union():
    spans = [sp("gateway.receive", "gateway", 0, 1), sp("vision.encode", "vision", 2, 12),
             sp("audio.encode", "audio", 4, 10), sp("decision.prefill", "decision", 13, 23),
             sp("decision.token", "decision", 23, 28), sp("gateway.shm_write", "gateway", 1, 1.05),
             sp("gateway.response_sent", "gateway", 29, 30)]
    rep = overhead_report(spans)
    assert rep["e2e"]["p50_ms"] == pytest.approx(30)
    assert rep["compute"]["p50_ms"] == pytest.approx(10 + 10 + 5)
    assert rep["overhead"]["p50_ms"] == pytest.approx(5)
    assert rep["shm_handoff"]["p50_ms"] == pytest.approx(0.05)
    assert overhead_report(spans, request_ids=["other"])["requests"] == 0


def _text_request(rid, hop_ms):
    """A text request's spans, the admission hop hop_ms long (times in ms)."""
    t = hop_ms - 0.45        # everything from the admission on moves by the hop's excess
    return [sp("gateway.receive", "gateway", 0, 1, rid), sp("gateway.media_decode", "gateway", 1, 1.4, rid),
            sp("gateway.shm_write", "gateway", 1.5, 1.55, rid),
            sp("decision.admission", "decision", 2 + t, 2.1 + t, rid),
            sp("decision.prefill", "decision", 2.1 + t, 5 + t, rid),
            sp("decision.first_token", "decision", 5.05 + t, 5.05 + t, rid),
            sp("decision.token", "decision", 5.3 + t, 8 + t, rid),
            sp("decision.token", "decision", 8.1 + t, 11 + t, rid),
            sp("decision.last_token", "decision", 11.05 + t, 11.05 + t, rid),
            sp("gateway.response_sent", "gateway", 11.5 + t, 11.6 + t, rid)]


def test_overhead_segments_say_where_each_gap_went():
    spans = _text_request("r", 0.45)
    seg = {k: v / MS for k, v in overhead_segments(spans).items()}
    assert seg == pytest.approx({
        "in gateway.receive": 1.0, "in gateway.media_decode": 0.4,
        "gateway.media_decode -> gateway.shm_write": 0.1, "in gateway.shm_write": 0.05,
        "gateway.shm_write -> decision.admission": 0.45, "in decision.admission": 0.1,
        "decision.prefill -> decision.first_token": 0.05,
        "decision.first_token -> decision.token": 0.25,
        "decision.token -> decision.token": 0.1, "decision.token -> decision.last_token": 0.05,
        "decision.last_token -> gateway.response_sent": 0.45, "in gateway.response_sent": 0.1})
    # the parts add up to the request's overhead: end to end minus the union of compute
    assert sum(seg.values()) == pytest.approx(request_timing("r", spans).overhead_ns / MS)
    assert sum(seg.values()) == pytest.approx(11.6 - (2.9 + 2.7 + 2.9))


def test_overhead_breakdown_gives_mean_and_median_per_place():
    # two requests admitted at once, one that waited 4 ms (behind another request's step)
    spans = _text_request("a", 0.45) + _text_request("b", 0.45) + _text_request("c", 4.45)
    spans.append(sp("vision.resize", "vision", 1.45, 1.5, "c"))   # only c passes there
    br = overhead_breakdown(spans, request_ids=["a", "b", "c", "unknown"])
    assert br["requests"] == 3
    hop = "gateway.shm_write -> decision.admission"
    assert br["mean_ms"][hop] == pytest.approx((0.45 + 0.45 + 4.45) / 3)
    assert br["p50_ms"][hop] == pytest.approx(0.45)
    assert br["p50_ms"]["in vision.resize"] == 0 and br["mean_ms"]["in vision.resize"] > 0
    assert list(br["mean_ms"])[0] == hop          # largest mean first
    assert list(br["p50_ms"]) == list(br["mean_ms"])
    mean_overhead = overhead_report(spans, request_ids=["a", "b", "c"])["overhead"]["mean_ms"]
    assert sum(br["mean_ms"].values()) == pytest.approx(mean_overhead)


def test_recording_round_trip_and_errors(tmp_path):
    spans = [Span("r1", "vision.encode", "vision", 7, 10, 20, {"tokens": 24}),
             Span("r1", "decision.first_token", "decision", 8, 30, 30)]
    path = tmp_path / "rec.jsonl"
    assert write_recording(path, spans, instance="x") == 2
    header, back = read_recording(path)
    assert back == spans and back[0].attrs == {"tokens": 24} and header["instance"] == "x"
    (tmp_path / "bad.jsonl").write_text('{"not": "a recording"}\n')
    with pytest.raises(ValueError, match="not an autoglm trace recording"):
        read_recording(tmp_path / "bad.jsonl")
    lines = path.read_text().splitlines()
    (tmp_path / "bad2.jsonl").write_text(lines[0] + "\n" + '{"request_id": "r", "name": "x"}\n')
    with pytest.raises(ValueError, match=r"bad2.jsonl:2: span record lacks field"):
        read_recording(tmp_path / "bad2.jsonl")
    with pytest.raises(FileNotFoundError):
        read_recording(tmp_path / "missing.jsonl")


def test_emitter_over_dds_times_spans_and_never_raises_after_close():
    from control.plane import ControlPlane

    from profiler.collect import SpanCollector
    from profiler.emit import SpanEmitter, emit_span

    instance = unique_instance("emit")
    with SpanCollector(instance, node_name="test-collector") as col:
        plane = ControlPlane(instance, "emitter")
        em = SpanEmitter(plane)
        assert em._writer.wait_for_readers(1, timeout=10)
        with em.span("vision.encode", "r1", tokens=3) as extra:
            time.sleep(0.02)
            extra["batch"] = 2
        with pytest.raises(KeyError):
            with em.span("decision.prefill", "r1"):
                raise KeyError("boom")
        em.mark("decision.first_token", "r1")
        t0 = time.monotonic_ns()
        emit_span(em._writer, "gateway.shm_write", "r1", t0, t0 + 5000, bytes=10)
        assert col.wait_for(lambda ss: len(ss) >= 4, timeout=10)
        got = {s.name: s for s in col.spans()}
        enc = got["vision.encode"]
        assert 20 <= enc.duration_ns / 1e6 < 40 and enc.attrs == {"tokens": 3, "batch": 2}
        assert enc.source == "emitter" and enc.pid == plane.pid
        assert got["decision.prefill"].attrs == {"error": "KeyError"}
        assert got["decision.first_token"].instant
        assert got["gateway.shm_write"].duration_ns == 5000
        plane.close()
        em.emit("late.span", "r1", 0)  # the plane is gone: counted, not raised
        assert em.dropped == 1 and em.emitted == 3  # the 4th went through emit_span's own
    with pytest.raises(TypeError, match="SpanEmitter takes"):
        SpanEmitter(object())


def test_bundled_spans_wait_for_a_flush_and_arrive_as_the_same_spans():
    """bundle=True: spans are held until flush() (one DDS message), a full bundle goes out
    by itself, a disabled emitter holds nothing, and the profiler expands bundles (with
    batched steps inside) into the very spans an unbundled emitter would have given."""
    from control.plane import ControlPlane

    from profiler.collect import SpanCollector
    from profiler.emit import BUNDLE_MAX_SPANS, SpanEmitter

    instance = unique_instance("bundle")
    with SpanCollector(instance, node_name="test-collector") as col, \
            ControlPlane(instance, "bundler") as plane:
        em = SpanEmitter(plane, bundle=True)
        assert em._writer.wait_for_readers(1, timeout=10)
        em.emit("gateway.receive", "r1", 100, 200, bytes=7)
        em.mark("decision.first_token", "r1", 250)
        em.emit_batch("decision.token", ["r1", "r2"], 300, 400, index=[1, 5])
        em.emit_batch("decision.token", ["r1"], 410, 500, index=[2])
        time.sleep(0.3)                    # held: nothing on DDS yet
        assert col.received == 0 and em.emitted == 0
        em.flush()
        assert col.wait_for(lambda ss: len(ss) >= 5, timeout=10)
        got = sorted((s.name, s.request_id, s.start_ns, s.end_ns, s.attrs.get("index"))
                     for s in col.spans())
        assert got == [("decision.first_token", "r1", 250, 250, None),
                       ("decision.token", "r1", 300, 400, 1),
                       ("decision.token", "r1", 410, 500, 2),
                       ("decision.token", "r2", 300, 400, 5),
                       ("gateway.receive", "r1", 100, 200, None)]
        assert all(s.source == "bundler" and s.pid == plane.pid for s in col.spans())
        assert em.emitted == 4             # four held entries (a batched step is one)
        for i in range(BUNDLE_MAX_SPANS):  # a full bundle is written without a flush
            em.emit("vision.encode", f"q{i}", i, i + 1)
        assert col.wait_for(lambda ss: len(ss) >= 5 + BUNDLE_MAX_SPANS, timeout=10)
        em.enabled = False                 # tracing off: nothing is held or written
        em.emit("vision.encode", "off", 1, 2)
        em.flush()
        time.sleep(0.3)
        assert col.received == 5 + BUNDLE_MAX_SPANS and em.emitted == 4 + BUNDLE_MAX_SPANS


def test_emission_cost_is_measured_with_and_without_a_profiler():
    from profiler.cost import measure_emission_cost

    c = measure_emission_cost(300)
    for key in ("without_profiler", "with_profiler", "bundled_with_profiler"):
        assert 0 < c[key]["median_us"] < 5000
    # The attached profiler really received (most of) what was written.
    assert c["with_profiler"]["received_by_profiler"] > 0.5 * c["with_profiler"]["written_while_attached"]



def check_nesting(events):
    """On every (pid, tid), X events nest perfectly: each starts at or after the end of every
    open slice, or ends within the innermost one (what Perfetto and chrome://tracing require
    of one track). Times in integer ns, as Perfetto reads them (llround(ts * 1000))."""
    tracks: dict = {}
    for e in events:
        if e["ph"] == "X":
            ts = round(e["ts"] * 1000)
            tracks.setdefault((e["pid"], e["tid"]), []).append(
                (ts, ts + round(e["dur"] * 1000), e["name"]))
    for track, slices in tracks.items():
        open_ends: list[tuple[int, str]] = []
        for start, end, name in sorted(slices, key=lambda x: (x[0], -x[1])):
            while open_ends and open_ends[-1][0] <= start:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1][0], \
                f"{name} [{start}, {end}] overlaps {open_ends[-1][1]} partially on {track}"
            open_ends.append((end, name))


def us_spans(rows, pid=1000):
    """Spans from (name, start_us, end_us[, request id[, pid]]) rows."""
    out = []
    for name, start, end, *rest in rows:
        rid, p = rest[0] if rest else "r", rest[1] if len(rest) > 1 else pid
        out.append(Span(rid, name, name.split(".")[0], p, start * 1000, end * 1000))
    return out


OVERLAPPING = us_spans([
    # Two requests' receives in the gateway overlap partially; r1's decode starts as its
    # receive ends, inside r2's receive, and outlasts it.
    ("gateway.receive", 0, 1000, "r1", 100), ("gateway.receive", 400, 1400, "r2", 100),
    ("gateway.media_decode", 1000, 1600, "r1", 100),
    ("gateway.submit", 1600, 1600, "r1", 100),            # a mark where the decode ends
    # Vision: the shm write starts before the encode's span ends.
    ("vision.encode", 1700, 3000, "r1", 200), ("vision.shm_write", 2900, 3200, "r1", 200),
    ("vision.encode", 3000, 4000, "r2", 200),
    # Decision: admission starts 4 us before the request's bookkeeping span, ends inside it.
    ("decision.admission", 3300, 3500, "r1", 300), ("decision.done", 3304, 9000, "r1", 300),
    ("decision.prefill", 3500, 5000, "r1", 300),
    ("decision.admission", 4100, 4300, "r2", 300), ("decision.done", 4104, 9500, "r2", 300),
    ("decision.first_token", 5000, 5000, "r1", 300),
    # Decode steps of both requests: the same name and interval, twice.
    ("decision.token", 5000, 5100, "r1", 300), ("decision.token", 5000, 5100, "r2", 300),
    ("decision.token", 5100, 5200, "r1", 300), ("decision.token", 5100, 5200, "r2", 300),
    ("decision.last_token", 5200, 5200, "r2", 300),
    ("gateway.response_sent", 5300, 9600, "r1", 100),
    ("gateway.response_sent", 5350, 9700, "r2", 100),
])


def test_perfetto_tracks_nest_with_partially_overlapping_spans(tmp_path):
    path = tmp_path / "trace.json"
    assert write_trace(path, OVERLAPPING) == len(OVERLAPPING)
    doc = json.loads(path.read_text())
    events = doc["traceEvents"]
    timed = [e for e in events if e["ph"] in ("X", "i")]
    check_nesting(timed)
    # No span lost or changed: the same names, requests, processes and times.
    assert len(timed) == len(OVERLAPPING) == doc["otherData"]["spans"]
    assert Counter((e["pid"], e["name"], e["args"]["request_id"], round(e["ts"] * 1000),
                    round(e.get("dur", 0) * 1000)) for e in timed) == \
        Counter((s.pid, s.name, s.request_id, s.start_ns, s.duration_ns) for s in OVERLAPPING)
    marks = ("gateway.submit", "decision.first_token", "decision.last_token")
    assert all(e["ph"] == "i" for e in timed if e["name"] in marks)
    # One process per pipeline process, named as before; every track used is named.
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {100: "gateway (pid 100)", 200: "vision (pid 200)", 300: "decision (pid 300)"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"]
               for e in events if e["name"] == "thread_name"}
    assert {(e["pid"], e["tid"]) for e in timed} == set(threads)
    sort = {(e["pid"], e["tid"]): e["args"]["sort_index"]
            for e in events if e["name"] == "thread_sort_index"}
    for pid, source in ((100, "gateway"), (200, "vision"), (300, "decision")):
        lanes = sorted((t, n) for (p, t), n in threads.items() if p == pid)
        assert len(lanes) > 1      # each process has partial overlaps
        # The first lane keeps the process's own id; the others follow, numbered, in order.
        assert lanes == [(pid, source)] + [(t, f"{source} {i}")
                                           for i, (t, _) in enumerate(lanes[1:], 2)]
        assert [sort[(pid, t)] for t, _ in lanes] == list(range(len(lanes)))


def test_perfetto_spans_that_nest_stay_on_one_track():
    spans = us_spans([("decision.done", 0, 100), ("decision.prefill", 10, 50),
                      ("decision.first_token", 50, 50), ("decision.token", 50, 60),
                      ("decision.token", 50, 60), ("decision.done", 100, 200),
                      ("decision.done", 200, 200)])
    events = trace_events(spans)["traceEvents"]
    assert {e["tid"] for e in events} == {1000}
    check_nesting(events)


def test_perfetto_random_overlaps_nest_on_every_track():
    rng = np.random.default_rng(1)
    spans = []
    for i in range(600):     # nanosecond times, marks and spans of 1 ns among them
        start = int(rng.integers(10**9, 10**9 + 5 * 10**6))
        end = start + int(rng.choice([0, 1, 3000, int(rng.integers(1, 800_000))]))
        spans.append(Span(f"r{i % 7}", f"stage{i % 3}.s{i % 5}", f"stage{i % 3}", 10 + i % 3,
                          start, end))
    events = trace_events(spans)["traceEvents"]
    timed = [e for e in events if e["ph"] in ("X", "i")]
    check_nesting(timed)
    origin = min(s.start_ns for s in spans)
    assert Counter((e["pid"], e["name"], round(e["ts"] * 1000), round(e.get("dur", 0) * 1000))
                   for e in timed) == \
        Counter((s.pid, s.name, s.start_ns - origin, s.duration_ns) for s in spans)
    # Every track is named and sorted, and belongs to one process only.
    named = [(e["pid"], e["tid"]) for e in events if e["name"] == "thread_name"]
    sorted_ = {(e["pid"], e["tid"]) for e in events if e["name"] == "thread_sort_index"}
    assert {(e["pid"], e["tid"]) for e in timed} == set(named) == sorted_
    assert len({t for _, t in named}) == len(named)
