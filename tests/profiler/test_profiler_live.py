"""The profiler against real processes: three stages (separate OS processes, real Cyclone DDS)
leave spans with known injected delays; the real `autoglm profile` command watches them live,
records them, writes a Perfetto trace and prints its tables as JSON."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import N_REQUESTS, REPO
from span_actor import DELAYS, TOKENS
from test_profiler_units import check_nesting

from profiler.recording import read_recording
from profiler.stats import by_request, hop_table, overhead_report, stage_table

EXPECTED_ORDER = ["gateway.receive", "gateway.media_decode", "gateway.shm_write", "vision.encode",
                  "decision.admission", "decision.prefill", "decision.first_token"] + \
                 ["decision.token"] * TOKENS + ["decision.last_token", "gateway.response_sent"]


def test_every_request_leaves_complete_ordered_spans(profiled_run):
    header, spans = read_recording(profiled_run["record"])
    assert header["instance"] == profiled_run["instance"] and header["clock"] == "CLOCK_MONOTONIC"
    groups = by_request(spans)
    assert sorted(groups) == [f"req-{i}" for i in range(N_REQUESTS)]
    pids = profiled_run["pids"]
    for rid, rs in groups.items():
        assert [s.name for s in rs] == EXPECTED_ORDER, rid
        # One monotonic clock across processes: each span starts after the previous ended,
        # although they come from three processes.
        for a, b in zip(rs, rs[1:]):
            assert b.start_ns >= a.end_ns, (rid, a.name, b.name)
        for s in rs:
            assert s.pid == pids[s.source] and s.stage == s.source
            assert s.rx_ns >= s.end_ns  # received after it ended, on the same clock
        assert [s.attrs["index"] for s in rs if s.name == "decision.token"] == list(range(TOKENS))


def test_profile_numbers_match_injected_delays(profiled_run):
    _, spans = read_recording(profiled_run["record"])
    table = stage_table(spans)
    for name, ms in DELAYS.items():
        row = table[name]
        assert row.count == N_REQUESTS * (TOKENS if name == "decision.token" else 1)
        # A sleep never ends early; on a loaded machine it may end up to a scheduler tick late.
        assert 0.95 * ms <= row.p(50) <= 1.1 * ms + 1.0, (name, row.p(50), ms)
    assert table["decision.first_token"].max_ms == 0.0  # marks are instants
    # Hops: exactly the three process boundaries, one per request each, small and positive.
    hops = hop_table(spans)
    assert set(hops) == {"gateway.shm_write -> vision.encode", "vision.encode -> decision.admission",
                         "decision.last_token -> gateway.response_sent"}
    for h in hops.values():
        assert h.count == N_REQUESTS and 0 <= h.p(50) < 20
    # Overhead = end-to-end minus compute (vision + prefill + tokens).
    rep = overhead_report(spans)
    compute = DELAYS["vision.encode"] + DELAYS["decision.prefill"] + TOKENS * DELAYS["decision.token"]
    assert 0.95 * compute <= rep["compute"]["p50_ms"] <= 1.1 * compute + 3.0
    not_compute = sum(DELAYS[n] for n in ("gateway.receive", "gateway.media_decode",
                                           "gateway.shm_write", "decision.admission",
                                           "gateway.response_sent"))
    assert not_compute * 0.9 <= rep["overhead"]["p50_ms"] <= not_compute + 30
    assert rep["complete_requests"] == N_REQUESTS


def test_cli_json_matches_recording_and_breaks_down_the_request(profiled_run):
    doc = profiled_run["cli"]
    assert doc["spans"] == len(read_recording(profiled_run["record"])[1])
    # As above: a sleep never ends early, and may end late on a loaded machine.
    d = DELAYS["vision.encode"]
    assert 0.95 * d <= doc["stages"]["vision.encode"]["p50_ms"] <= 1.1 * d + 1.0
    req = doc["request"]
    assert req["id"] == profiled_run["last"]
    assert [r["name"] for r in req["spans"]] == EXPECTED_ORDER
    assert req["spans"][0]["offset_ms"] == 0.0
    prefill = next(r for r in req["spans"] if r["name"] == "decision.prefill")
    d = DELAYS["decision.prefill"]
    assert d - 0.01 <= prefill["duration_ms"] <= 1.1 * d + 10, prefill   # one span: more slack


def test_perfetto_file_is_trace_event_json(profiled_run):
    doc = json.loads(profiled_run["trace"].read_text())
    events = doc["traceEvents"]
    for ev in events:
        assert {"ph", "ts", "pid", "tid", "name"} <= set(ev), ev
        assert isinstance(ev["ts"], (int, float))
    spans = [e for e in events if e["ph"] in ("X", "i")]
    assert len(spans) == doc["otherData"]["spans"] == N_REQUESTS * len(EXPECTED_ORDER)
    # One process per node, named after it; its spans on tracks (named) where they nest.
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {pid: f"{role} (pid {pid})" for role, pid in profiled_run["pids"].items()}
    threads = {(e["pid"], e["tid"]) for e in events if e["name"] == "thread_name"}
    assert {(e["pid"], e["tid"]) for e in spans} <= threads
    check_nesting(spans)
    # ts/dur are microseconds: a 30 ms sleep lasts about 30000, never much less (on a loaded
    # machine it may run late, so the upper bound only rules out the wrong unit).
    vis = [e for e in spans if e["name"] == "vision.encode"]
    assert vis and all(e["ph"] == "X" and 28_500 <= e["dur"] < 300_000 for e in vis), \
        [e["dur"] for e in vis]
    assert all(e["ph"] == "i" for e in spans if e["name"] == "decision.first_token")
    assert min(e["ts"] for e in spans) == 0


def test_replay_of_recording_through_the_cli(profiled_run, tmp_path):
    out = tmp_path / "again.json"
    r = subprocess.run([sys.executable, "-m", "launch.cli", "profile", "--input",
                        str(profiled_run["record"]), "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "vision.encode" in r.stdout and "gateway.shm_write -> vision.encode" in r.stdout
    assert "pipeline overhead over 5 requests" in r.stdout
    assert json.loads(out.read_text())["otherData"]["spans"] == N_REQUESTS * len(EXPECTED_ORDER)
    r = subprocess.run([sys.executable, "-m", "launch.cli", "profile", "--input",
                        str(profiled_run["record"]), "--request", "no-such-request"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no spans of request 'no-such-request'" in r.stderr
