"""Batched spans (one decode step of several requests in one message) and the overhead
report's figure without media decoding."""
from __future__ import annotations

from profiler.recording import read_recording, write_recording
from profiler.spans import BATCH_KEY, BATCH_REQUEST_ID, Span, expand_batch
from profiler.stats import overhead_report


def _batch():
    return Span(BATCH_REQUEST_ID, "decision.token", "decision", 7, 100, 350,
                attrs={BATCH_KEY: ["a", "b", "c"], "index": [1, 4, 2], "step": 9})


def test_a_batched_span_becomes_one_span_per_request():
    parts = expand_batch(_batch())
    assert [p.request_id for p in parts] == ["a", "b", "c"]
    assert [p.attrs["index"] for p in parts] == [1, 4, 2]
    assert all(p.attrs["step"] == 9 and p.attrs["batch"] == 3 for p in parts)
    assert all((p.start_ns, p.end_ns, p.pid, p.source) == (100, 350, 7, "decision") for p in parts)
    plain = Span("a", "decision.prefill", "decision", 7, 1, 2, attrs={"index": [1]})
    assert expand_batch(plain) == [plain]


def test_recordings_expand_batched_spans(tmp_path):
    write_recording(tmp_path / "r.jsonl", [_batch()])
    _, spans = read_recording(tmp_path / "r.jsonl")
    assert sorted(s.request_id for s in spans) == ["a", "b", "c"]


def test_overhead_with_and_without_media_decode():
    ms = 1_000_000
    spans = [Span("r", "gateway.receive", "gw", 1, 0, 1 * ms),
             Span("r", "gateway.media_decode", "gw", 1, 1 * ms, 11 * ms),
             Span("r", "decision.prefill", "decision", 2, 12 * ms, 20 * ms),
             Span("r", "decision.token", "decision", 2, 21 * ms, 23 * ms),
             Span("r", "gateway.response_sent", "gw", 1, 24 * ms, 25 * ms)]
    rep = overhead_report(spans)
    assert rep["compute"]["p50_ms"] == 10.0
    assert rep["overhead"]["p50_ms"] == 15.0              # 25 end-to-end - 10 compute
    assert rep["overhead_excl_preprocess"]["p50_ms"] == 5.0   # less the 10 ms of decoding
