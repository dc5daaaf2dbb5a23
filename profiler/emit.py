"""Emitting trace spans from a stage: one writer of the control plane's trace topic per process.

    from profiler.emit import SpanEmitter
    tracer = SpanEmitter(plane)                  # or SpanEmitter(existing_trace_writer)
    with tracer.span("vision.encode", request_id, tokens=24):
        ...                                      # timed with time.monotonic_ns()
    t0 = time.monotonic_ns(); ...; tracer.emit("gateway.shm_write", rid, t0)   # end = now
    tracer.mark("decision.first_token", rid)     # an instant
    tracer.emit_batch("decision.token", [r1, r2], t0, index=[5, 9])   # one span, two requests
    tracer = SpanEmitter(plane, bundle=True)     # spans held, written as one message by flush()

Every timestamp is ``time.monotonic_ns()``: one clock for all processes of the machine.
The trace topic is best-effort keep-last (control.topics.TRACE), so writing never blocks a
stage on a slow or absent profiler; and emission never raises into the stage: a span that
cannot be written (plane closed during shutdown) is counted in ``dropped`` and forgotten.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Iterator

from .spans import BATCH_KEY, BATCH_REQUEST_ID, BUNDLE_NAME, SPANS_KEY

_now = time.monotonic_ns

BUNDLE_MAX_SPANS = 64
# A held span reaches the profiler within 0.5 s of the next: often enough for the live view
# (redrawn every second), and not during a request at low load: at 0.1 s, a bundle's write of
# ~0.3 ms fell between two decode steps of 9 in 40 requests at 2 requests/s on the 2-core VM,
# at 0.5 s of none (instrumented decode loop, 2026-12-04).
BUNDLE_MAX_AGE_NS = 500_000_000

ENV_TRACE = "AUTOGLM_TRACE"  # "0": this process starts with its spans off

# The process's tracing switch, which every emitter made with ``enabled=None`` follows: the
# stage runtime sets it from the config value trace.enabled, and the gateway's own emitter
# (execution.shm_client, in the same process) follows it, without knowing the config topic.
_process_tracing = [os.environ.get(ENV_TRACE, "1") != "0"]


def set_process_tracing(on: bool) -> None:
    """Switch the spans of every emitter of this process that follows the switch."""
    _process_tracing[0] = bool(on)


def process_tracing() -> bool:
    return _process_tracing[0]


class SpanEmitter:
    """Writes TraceSpan messages for one process. Thread-safe (Cyclone writers may be shared
    between threads; the bundle is under a lock).

    With ``bundle=True`` spans are held and written as one bundle message
    (profiler.spans.BUNDLE_NAME) by ``flush()``, which the owner calls when it goes idle or a
    request's response is complete; a bundle also goes out when it holds BUNDLE_MAX_SPANS
    spans or, at the next span, once its oldest is BUNDLE_MAX_AGE_NS old. The pipeline's
    stages bundle: the DDS write of each span then no longer delays the request it times.

    ``enabled=None``: on and off with the process's switch (set_process_tracing; at start
    AUTOGLM_TRACE), as the pipeline's stages and the gateway's client are; setting
    ``enabled`` later fixes it for this emitter alone."""

    def __init__(self, plane_or_writer, *, enabled: bool | None = True,
                 bundle: bool = False) -> None:
        from control import topics as t
        from control.messages import TraceSpan
        from control.plane import ControlPlane, Writer

        if isinstance(plane_or_writer, ControlPlane):
            self._writer = plane_or_writer.writer(t.TRACE_SPAN)
        elif isinstance(plane_or_writer, Writer):
            if plane_or_writer.spec.name != t.TRACE_SPAN.name:
                raise ValueError(f"SpanEmitter needs a writer of {t.TRACE_SPAN.name}, "
                                 f"got one of {plane_or_writer.spec.name}")
            self._writer = plane_or_writer
        else:
            raise TypeError("SpanEmitter takes a control.plane.ControlPlane or a trace-topic "
                            f"Writer, not {type(plane_or_writer).__name__}")
        self._msg_type = TraceSpan
        self._enabled = enabled
        self.bundle = bundle
        self.pid = os.getpid()
        self.emitted = 0
        self.dropped = 0
        self._held: list = []          # [name, request_id, start, end, attrs] while bundling
        self._held_since = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        on = self._enabled
        return _process_tracing[0] if on is None else on

    @enabled.setter
    def enabled(self, on: bool | None) -> None:
        self._enabled = on

    def emit(self, name: str, request_id: str, start_ns: int, end_ns: int | None = None,
             **attrs) -> None:
        """One span from ``start_ns`` to ``end_ns`` (default: now), both monotonic ns."""
        if not self.enabled:
            return
        end = _now() if end_ns is None else end_ns
        if self.bundle:
            with self._lock:
                if not self._held:
                    self._held_since = end
                self._held.append([name, request_id, int(start_ns), int(end), attrs])
                full = (len(self._held) >= BUNDLE_MAX_SPANS
                        or end - self._held_since >= BUNDLE_MAX_AGE_NS)
            if full:
                self.flush()
            return
        self._write(name, request_id, int(start_ns), int(end), attrs, 1)

    def flush(self) -> None:
        """Write the held spans as one bundle (nothing when none are held)."""
        with self._lock:
            held, self._held = self._held, []
        if not held:
            return
        if len(held) == 1:
            self._write(*held[0], 1)
            return
        self._write(BUNDLE_NAME, BATCH_REQUEST_ID, min(h[2] for h in held),
                    max(h[3] for h in held), {SPANS_KEY: held}, len(held))

    def _write(self, name: str, request_id: str, start: int, end: int, attrs: dict,
               n_spans: int) -> None:
        msg = self._msg_type(request_id=request_id, name=name, pid=self.pid,
                             start_mono_ns=start, end_mono_ns=end,
                             attrs_json=json.dumps(attrs, separators=(",", ":"),
                                                   default=str) if attrs else "")
        try:
            self._writer.write(msg)
            self.emitted += n_spans
        except Exception:  # a closed plane at shutdown: tracing must never fail the stage
            self.dropped += n_spans

    def emit_batch(self, name: str, request_ids, start_ns: int, end_ns: int | None = None,
                   **attrs) -> None:
        """One span standing for the same interval of several requests (one decode step of a
        batch): one write instead of one per request. List attributes as long as
        ``request_ids`` are per request (``index=[...]``); the profiler expands the span into
        one per request (profiler.spans.expand_batch)."""
        if not self.enabled or not request_ids:
            return
        self.emit(name, BATCH_REQUEST_ID, start_ns, end_ns,
                  **{BATCH_KEY: list(request_ids)}, **attrs)

    def mark(self, name: str, request_id: str, at_ns: int | None = None, **attrs) -> None:
        """An instant span (start == end)."""
        t = _now() if at_ns is None else at_ns
        self.emit(name, request_id, t, t, **attrs)

    @contextlib.contextmanager
    def span(self, name: str, request_id: str, **attrs) -> Iterator[dict]:
        """Time the ``with`` body. The yielded dict may be filled with more attributes; a body
        that raises still leaves its span, with ``error`` set."""
        start = _now()
        extra: dict = {}
        try:
            yield extra
        except BaseException as e:
            extra["error"] = type(e).__name__
            raise
        finally:
            self.emit(name, request_id, start, _now(), **attrs, **extra)


def emit_span(writer_or_emitter, name: str, request_id: str, start_ns: int,
              end_ns: int | None = None, **attrs) -> None:
    """One-line emission for call sites that hold a trace writer (e.g. the stage runtime's
    ``w_trace``) rather than a SpanEmitter."""
    em = writer_or_emitter if isinstance(writer_or_emitter, SpanEmitter) else \
        _emitter_for(writer_or_emitter)
    em.emit(name, request_id, start_ns, end_ns, **attrs)


_emitters: dict[int, SpanEmitter] = {}


def _emitter_for(writer) -> SpanEmitter:
    em = _emitters.get(id(writer))
    if em is None or em._writer is not writer:
        em = _emitters[id(writer)] = SpanEmitter(writer)
    return em
