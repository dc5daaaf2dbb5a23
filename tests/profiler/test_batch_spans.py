"""Batched spans (one decode step of several requests in one message) and the overhead
report's figure without media decoding."""
from __future__ import annotations

from profiler.recording import read_recording, write_recording
from profiler.emit import StepSpanBuffer
from profiler.spans import BATCH_KEY, BATCH_REQUEST_ID, STEPS_KEY, Span, expand_batch
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


def test_a_multi_step_span_becomes_the_spans_of_every_step():
    span = Span(BATCH_REQUEST_ID, "decision.token", "decision", 7, 100, 900, attrs={STEPS_KEY: [
        [100, 300, {BATCH_KEY: ["a", "b"], "index": [1, 4]}],
        [310, 900, {BATCH_KEY: ["b"], "index": [5]}]]})
    parts = expand_batch(span)
    assert [(p.request_id, p.start_ns, p.end_ns, p.attrs["index"], p.attrs["batch"])
            for p in parts] == [("a", 100, 300, 1, 2), ("b", 100, 300, 4, 2),
                                ("b", 310, 900, 5, 1)]
    assert all((p.name, p.pid, p.source) == ("decision.token", 7, "decision") for p in parts)


class _Recorder:
    """Stands in for SpanEmitter's writer side: keeps what emit() was asked to write."""

    enabled = True

    def __init__(self):
        self.written = []

    def emit(self, name, request_id, start_ns, end_ns=None, **attrs):
        self.written.append(Span(request_id, name, "decision", 7, start_ns, end_ns, attrs=attrs))


def test_step_buffer_writes_every_step_once_in_few_messages():
    rec = _Recorder()
    buf = StepSpanBuffer(rec, "decision.token", max_steps=4, max_age_ns=10**12)
    for i in range(10):
        buf.add(["a", "b"] if i % 2 else ["a"], 1000 * i, 1000 * i + 500, index=[i] * (1 + i % 2))
    assert len(rec.written) == 2 and len(buf) == 2   # full at 4 steps: two writes so far
    buf.flush()
    buf.flush()                                      # nothing left: no empty message
    assert len(rec.written) == 3 and len(buf) == 0
    parts = [p for m in rec.written for p in expand_batch(m)]
    assert [(p.request_id, p.start_ns) for p in parts if p.request_id == "a"] == [
        ("a", 1000 * i) for i in range(10)]
    assert [p.start_ns for p in parts if p.request_id == "b"] == [1000 * i for i in (1, 3, 5, 7, 9)]
    assert (rec.written[0].start_ns, rec.written[0].end_ns) == (0, 3500)


def test_step_buffer_flushes_old_steps_and_skips_when_tracing_is_off():
    rec = _Recorder()
    buf = StepSpanBuffer(rec, "decision.token", max_steps=100, max_age_ns=1000)
    buf.add(["a"], 0, 400)
    assert not rec.written
    buf.add(["a"], 500, 1200)                        # 1200 ns after the first step began
    assert len(rec.written) == 1 and len(expand_batch(rec.written[0])) == 2
    rec.enabled = False
    buf.add(["a"], 2000, 2100)
    buf.flush()
    assert len(rec.written) == 1


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
