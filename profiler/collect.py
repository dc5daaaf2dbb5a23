"""Collecting the spans of a live pipeline: a passive observer of its trace topic.

``SpanCollector`` joins the instance's DDS domain as its own participant, reads the trace
topic with the observer QoS (best-effort, keep-last 1024: it never back-pressures a stage),
and keeps every span it receives, stamped with its receive time. A background thread takes
the samples, so the DDS reader's history is emptied continuously and bursts are not lost to
the keep-last depth while the terminal redraws.

What the profiler cannot see: spans written before it joined (the topic is volatile) and,
under a burst faster than it drains, spans overwritten in the history (best-effort never
retransmits). ``received`` counts what arrived.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

from .spans import Span, spans_from_message


class SpanCollector:
    def __init__(self, instance: str, *, node_name: str | None = None,
                 domain_id: int | None = None,
                 on_span: Callable[[Span], None] | None = None) -> None:
        from control import topics as t
        from control.plane import ControlPlane

        self.instance = instance
        self.plane = ControlPlane(instance, node_name or f"autoglm-profile-{os.getpid()}",
                                  domain_id=domain_id)
        self._reader = self.plane.reader(t.TRACE_SPAN, observer=True)
        self._spans: list[Span] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._on_span = on_span
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._pump, name="span-collector", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ reading
    def _pump(self) -> None:
        try:
            while not self._stop.is_set():
                msgs = self._reader.take(timeout=0.1)
                if not msgs:
                    continue
                rx = time.monotonic_ns()
                spans = [s for m in msgs for s in spans_from_message(m, rx)]
                with self._cond:
                    self._spans.extend(spans)
                    self._cond.notify_all()
                if self._on_span is not None:
                    for s in spans:
                        self._on_span(s)
        except BaseException as e:  # surfaced by spans()/wait_for()
            if not self._stop.is_set():
                self._error = e

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"span collector failed: {self._error!r}") from self._error

    @property
    def received(self) -> int:
        with self._lock:
            return len(self._spans)

    def spans(self) -> list[Span]:
        """A copy of every span received so far."""
        self._check()
        with self._lock:
            return list(self._spans)

    def spans_since(self, index: int) -> tuple[list[Span], int]:
        """Spans received after the first ``index`` ones, and the new index."""
        self._check()
        with self._lock:
            return self._spans[index:], len(self._spans)

    def wait_for(self, predicate: Callable[[list[Span]], bool], timeout: float) -> bool:
        """Wait until ``predicate(spans)`` holds; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._spans):
                left = deadline - time.monotonic()
                if left <= 0 or self._error is not None:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def wait_for_writers(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until ``count`` trace writers are matched (discovery done)."""
        return self._reader.wait_for_writers(count, timeout)

    @property
    def matched_writers(self) -> int:
        return self._reader.matched_writers

    def close(self) -> None:
        self._stop.set()
        self._reader.wake()
        self._thread.join(timeout=2.0)
        self.plane.close()

    def __enter__(self) -> "SpanCollector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
