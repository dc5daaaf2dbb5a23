"""`autoglm bench serve` against a real HTTP server streaming at a known pace
(tests/profiler/paced_server.py: first token after 200 ms, then one every 50 ms)."""
from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, unique_instance

from benchmarks import serve

TTFT_MS, ITL_MS, TOKENS = 200.0, 50.0, 6


def _samples(n, out_len=TOKENS):
    return [serve.SampleRequest([{"role": "user", "content": f"hi {i}"}], 2, out_len) for i in range(n)]


def _run(base_url, n=4, **kw):
    return asyncio.run(serve.run_benchmark(base_url=base_url, endpoint="/v1/chat/completions",
                                           model="paced", api_key="k", samples=_samples(n),
                                           progress=False, **kw))


def _close(value, target, rel=0.10):
    return abs(value - target) <= rel * target


def _paced(value, target, rel=0.10, late_ms=10.0):
    """A paced timing measured on a loaded machine: never much early, but may run late by the
    scheduler's delay (late_ms), which is far smaller than any mistake in what is measured."""
    return (1 - rel) * target <= value <= (1 + rel) * target + late_ms


def test_ttft_tpot_itl_match_the_server_pace(paced_server):
    url = paced_server("--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS), "--tokens", str(TOKENS))
    outputs, duration = _run(url, n=4, max_concurrency=2)
    assert all(o.success for o in outputs), [o.error for o in outputs]
    m = serve.compute_metrics(outputs, duration, [50, 90, 99], {"ttft": 1000, "tpot": 100})
    assert m["completed"] == 4 and m["total_output_tokens"] == 4 * TOKENS
    assert m["total_input_tokens"] == 4 * 11  # the server's usage.prompt_tokens
    assert _paced(m["mean_ttft_ms"], TTFT_MS), m["mean_ttft_ms"]
    assert _paced(m["median_tpot_ms"], ITL_MS), m["median_tpot_ms"]
    assert _paced(m["median_itl_ms"], ITL_MS), m["median_itl_ms"]
    assert _paced(m["p99_itl_ms"], ITL_MS, 0.3)
    e2e = TTFT_MS + (TOKENS - 1) * ITL_MS
    assert _paced(m["median_e2el_ms"], e2e, late_ms=30), m["median_e2el_ms"]
    # reasoning and content chunks both count; pooled ITL has (tokens - 1) gaps per request.
    assert all(o.chunks == TOKENS and len(o.itl) == TOKENS - 1 for o in outputs)
    assert all(o.generated_text.startswith("w0 r1 ") for o in outputs)
    # 4 requests, 2 at a time: two waves of ~450 ms.
    assert _paced(duration * 1e3, 2 * e2e, 0.25, late_ms=100), duration
    assert m["request_goodput"] == pytest.approx(4 / duration)
    strict = serve.compute_metrics(outputs, duration, [99], {"ttft": TTFT_MS / 2})
    assert strict["request_goodput"] == 0


def test_token_count_falls_back_to_chunks_without_usage(paced_server):
    url = paced_server("--ttft-ms", "50", "--itl-ms", "20", "--tokens", "4", "--no-usage")
    outputs, duration = _run(url, n=2)
    assert all(o.success and not o.usage_reported and o.output_tokens == 4 for o in outputs)
    m = serve.compute_metrics(outputs, duration, [99])
    assert m["total_input_tokens"] == 2 * 2  # the dataset's own estimate
    assert _paced(m["median_tpot_ms"], 20, 0.25)


def test_failures_are_reported_not_counted(paced_server):
    outputs, duration = asyncio.run(serve.run_benchmark(
        base_url="http://127.0.0.1:9", endpoint="/v1/chat/completions", model="m", api_key=None,
        samples=_samples(2), test_request=False, progress=False))
    assert not any(o.success for o in outputs) and all("Connect" in o.error for o in outputs)
    m = serve.compute_metrics(outputs, duration, [99])
    assert m["completed"] == 0 and m["failed"] == 2


def test_arrival_times_follow_vllm_get_request():
    """vLLM's get_request: one gamma delay per request (the first included), summed, then
    scaled so that the last request goes out at exactly N/rate."""
    for burstiness in (1.0, 0.5, 4.0):
        for n, rate in ((12, 2.0), (200, 50.0), (1, 3.0)):
            times = np.array(serve.arrival_times(n, rate, burstiness, seed=0))
            assert len(times) == n and times[-1] == pytest.approx(n / rate, rel=1e-12)
            assert times[0] > 0 and np.all(np.diff(times) > 0), (burstiness, n, times)
            assert serve.arrival_times(n, rate, burstiness, seed=0) == times.tolist()
        assert serve.arrival_times(50, 5.0, burstiness, seed=1) != serve.arrival_times(
            50, 5.0, burstiness, seed=2)
    # The audit's case: 12 prompts at 2 req/s are all sent within 6 s (not 8.75).
    assert serve.arrival_times(12, 2.0, 1.0, seed=0)[-1] == pytest.approx(6.0)
    assert serve.arrival_times(3, math.inf, 1.0, 0) == [0.0, 0.0, 0.0]
    assert serve.arrival_times(3, math.inf, math.inf, 0) == [0.0, 0.0, 0.0]
    assert serve.arrival_times(4, 8.0, math.inf, 0) == pytest.approx([0.125, 0.25, 0.375, 0.5])


def test_arrival_times_keep_the_gamma_shape():
    """Scaling keeps the relative spread: Poisson gaps have std == mean, burstiness < 1 more."""
    gaps = np.diff(serve.arrival_times(20000, 50.0, 1.0, seed=1), prepend=0.0)
    assert _close(gaps.mean(), 1 / 50, 1e-9) and _close(gaps.std(), 1 / 50, 0.05)
    bursty = np.diff(serve.arrival_times(20000, 50.0, 0.25, seed=1), prepend=0.0)
    assert _close(bursty.mean(), 1 / 50, 1e-9) and bursty.std() > 1.8 * bursty.mean()
    even = np.diff(serve.arrival_times(20000, 50.0, 4.0, seed=1), prepend=0.0)
    assert _close(even.std(), 0.5 / 50, 0.05)  # gamma(4): std = mean / 2


def test_requests_go_out_on_the_schedule_and_max_concurrency_still_caps(paced_server):
    url = paced_server("--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS), "--tokens", str(TOKENS))
    e2e = TTFT_MS + (TOKENS - 1) * ITL_MS
    # 10 req/s, evenly spaced: sent at 0.1, 0.2, 0.3, 0.4 s, each served at once.
    outputs, duration = _run(url, n=4, request_rate=10.0, burstiness=math.inf, test_request=False)
    assert all(o.success for o in outputs), [o.error for o in outputs]
    sends = np.diff([o.start_time for o in outputs]) * 1e3
    assert all(_paced(g, 100.0, 0.2, late_ms=30) for g in sends), sends
    assert _paced(duration * 1e3, 400 + e2e, 0.15, late_ms=100), duration
    # One in flight at a time: each waits for the one before, whatever the schedule says.
    outputs, duration = _run(url, n=4, request_rate=10.0, burstiness=math.inf, max_concurrency=1,
                             test_request=False)
    assert all(o.success for o in outputs), [o.error for o in outputs]
    sends = np.diff([o.start_time for o in outputs]) * 1e3
    assert all(_paced(g, e2e, 0.1, late_ms=40) for g in sends), sends
    assert _paced(duration * 1e3, 100 + 4 * e2e, 0.15, late_ms=150), duration


def test_synthetic_media_are_valid():
    import io
    import wave

    from PIL import Image

    png = Image.open(io.BytesIO(serve.synthetic_screen_png(1080, 2400, 0)))
    assert (png.size, png.mode) == ((1080, 2400), "RGBA")          # as screencap writes it
    assert png.getchannel("A").getextrema() == (255, 255)
    with wave.open(io.BytesIO(serve.synthetic_wav(1.5, 0))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, 24000)


def test_cli_writes_json_and_reports_pipeline_overhead_from_traces(paced_server, tmp_path):
    instance = unique_instance("bench")
    url = paced_server("--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS), "--tokens", str(TOKENS),
                       "--instance", instance)
    out = tmp_path / "serve.json"
    r = subprocess.run([sys.executable, "-m", "launch.cli", "bench", "serve", "--base-url", url,
                        "--num-prompts", "3", "--request-rate", "20", "--percentiles", "50,90,99",
                        "--dataset", "random-image", "--image-size", "108x240",
                        "--goodput", "ttft:1000", "e2el:5000", "--instance", instance,
                        "--result-file", str(out), "--record", str(tmp_path / "spans.jsonl")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Serving Benchmark Result" in r.stdout and "P90 TTFT (ms):" in r.stdout
    assert "3/3" in r.stderr  # the progress line
    res = json.loads(out.read_text())
    assert res["model"] == "paced" and res["completed"] == 3 and res["request_goodput"] > 0
    assert _paced(res["median_ttft_ms"], TTFT_MS) and _paced(res["median_itl_ms"], ITL_MS)
    assert len(res["request_ids"]) == 3 and all(i.startswith("chatcmpl-") for i in res["request_ids"])
    ov = res["pipeline_overhead"]
    # The test request is not one of the benchmark's: only the 3 are reported.
    assert ov["requests"] == 3 and ov["complete_requests"] == 3
    compute = TTFT_MS + (TOKENS - 1) * ITL_MS
    assert _paced(ov["compute"]["p50_ms"], compute, late_ms=30)
    assert 0 <= ov["overhead"]["p50_ms"] < 0.1 * compute
    # The recording holds the spans behind these figures, and only the benchmark's requests'.
    from profiler.recording import read_recording
    from profiler.stats import overhead_report
    header, spans = read_recording(tmp_path / "spans.jsonl")
    assert header["instance"] == instance
    assert {s.request_id for s in spans} == set(res["request_ids"])
    assert overhead_report(spans)["overhead"] == ov["overhead"]
    # where it went: the means add up to the mean overhead, and the text shows the largest
    from profiler.stats import overhead_breakdown
    places = ov["overhead_by_place"]
    assert places == json.loads(json.dumps(overhead_breakdown(spans)))
    assert sum(places["mean_ms"].values()) == pytest.approx(ov["overhead"]["mean_ms"])
    top = next(iter(places["mean_ms"]))
    assert "where it goes, per request" in r.stdout
    assert re.search(rf"^    {re.escape(top)} +{places['mean_ms'][top]:7.3f} ms", r.stdout, re.M)


def test_an_instance_not_running_here_is_said_before_and_after(paced_server, tmp_path):
    """--instance of no pipeline on this machine: said at once, and the missing spans are
    said with the hint to check tracing (it read like tracing was off)."""
    url = paced_server("--ttft-ms", "5", "--itl-ms", "2", "--tokens", "4")
    r = subprocess.run([sys.executable, "-m", "launch.cli", "bench", "serve", "--base-url", url,
                        "--num-prompts", "2", "--instance", "nosuch-instance", "--result-file",
                        str(tmp_path / "s.json")], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("no pipeline of instance 'nosuch-instance' runs on this machine")
    assert "is tracing on (`autoglm param list --instance nosuch-instance`)?" in r.stderr


def test_client_priority_idle_runs_the_client_at_sched_idle(paced_server, tmp_path):
    url = paced_server("--ttft-ms", "5", "--itl-ms", "2", "--tokens", "4")
    out = tmp_path / "serve.json"
    base = [sys.executable, "-m", "launch.cli", "bench", "serve", "--base-url", url,
            "--num-prompts", "2", "--result-file", str(out)]
    for priority in ("idle", "normal"):
        r = subprocess.run(base + ["--client-priority", priority], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        res = json.loads(out.read_text())
        # Read back from the OS by the client itself, after the run.
        assert res["client_priority"] == priority and res["completed"] == 2


def test_bad_arguments_are_named():
    for args, msg in ((["--goodput", "ttfx:5"], "--goodput takes KEY:MS"),
                      (["--percentiles", "0,50"], "--percentiles: 0 is not in (0, 100]"),
                      (["--percentiles", "50,100.5"], "--percentiles: 100.5 is not in (0, 100]"),
                      (["--percentiles", "50,x"], "--percentiles: 'x' is not a number"),
                      (["--request-rate", "0"], "--request-rate must be positive"),
                      (["--request-timeout", "0"], "--request-timeout must be positive"),
                      (["--record", "x.jsonl"], "give --instance too"),
                      (["--image-size", "10by20", "--dataset", "random-image"], "--image-size must be WxH")):
        r = subprocess.run([sys.executable, "-m", "launch.cli", "bench", "serve", "--model", "m",
                            "--base-url", "http://127.0.0.1:9", *args], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and msg in r.stderr, (args, r.stderr)
