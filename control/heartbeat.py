"""A stage's liveness and lifecycle state: ``Heartbeater``.

A background thread publishes a ``Heartbeat`` every ``period_s`` (1 s) carrying pid,
state, a sequence number and the send time; the supervisor marks a stage dead when beats
stop (3 missed seconds). ``set_state`` also publishes a ``StageState`` at once on the
reliable, transient-local state topic, so `autoglm node list` started later still sees it.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Iterable

from .messages import Heartbeat, StageState, StageStates
from .plane import ControlPlane
from .topics import HEARTBEAT, STAGE_STATE

HEARTBEAT_PERIOD_S = 1.0


class Heartbeater:
    """Publishes this stage's heartbeat every ``period_s`` and its state on change.

    ``stage`` defaults to the plane's node name. ``in_flight`` is an optional callable
    returning the number of requests the stage is working on (read at every beat).
    Use as a context manager, or ``start()`` / ``stop()``.
    """

    def __init__(self, plane: ControlPlane, *, stage: str | None = None,
                 period_s: float = HEARTBEAT_PERIOD_S, cores: Iterable[int] = (),
                 restarts: int = 0, in_flight: Callable[[], int] | None = None,
                 initial_state: str = StageStates.STARTING) -> None:
        if period_s <= 0:
            raise ValueError(f"heartbeat period must be > 0 s, got {period_s}")
        _check_state(initial_state)
        self.plane = plane
        self.stage = stage or plane.node_name
        self.period_s = period_s
        self.cores = [int(c) for c in cores]
        self.restarts = int(restarts)
        self._in_flight = in_flight
        self._state = initial_state
        self._detail = ""
        self._seq = 0
        self._lock = threading.Lock()  # serialises writes from the thread and set_state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hb_writer = plane.writer(HEARTBEAT)
        self._state_writer = plane.writer(STAGE_STATE)
        self._publish_state(request_id="")

    @property
    def state(self) -> str:
        return self._state

    def set_state(self, state: str, detail: str = "", request_id: str = "") -> None:
        """Change the state: published now on the state topic and in the next beats."""
        _check_state(state)
        with self._lock:
            self._state, self._detail = state, detail
        self._publish_state(request_id)

    def beat(self) -> None:
        """Publish one heartbeat now (the thread calls this every period)."""
        in_flight = int(self._in_flight()) if self._in_flight else 0
        with self._lock:
            self._seq += 1
            msg = Heartbeat(stage=self.stage, seq=self._seq, pid=os.getpid(),
                            state=self._state, in_flight=in_flight)
            self._hb_writer.write(msg)

    def start(self) -> "Heartbeater":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.stage}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, final_state: str | None = StageStates.STOPPED, detail: str = "") -> None:
        """Stop beating; publish ``final_state`` (None: publish nothing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.period_s)
            self._thread = None
        if final_state is not None and not self.plane.closed:
            self.set_state(final_state, detail)

    def __enter__(self) -> "Heartbeater":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.stop(StageStates.ERROR, f"{exc_type.__name__}: {exc}")
        else:
            self.stop()

    def _publish_state(self, request_id: str) -> None:
        with self._lock:
            msg = StageState(stage=self.stage, request_id=request_id, state=self._state,
                             pid=os.getpid(), cores=self.cores, restarts=self.restarts,
                             detail=self._detail)
            self._state_writer.write(msg)

    def _run(self) -> None:
        # Fixed-rate schedule on the monotonic clock: no drift from the write time.
        next_beat = time.monotonic()
        while not self._stop.is_set() and not self.plane.closed:
            try:
                self.beat()
            except Exception:
                if self.plane.closed:
                    return
                raise
            next_beat += self.period_s
            delay = next_beat - time.monotonic()
            if delay < 0:  # fell behind (process stalled): resume from now, no burst
                next_beat = time.monotonic()
                delay = 0
            self._stop.wait(delay)


def _check_state(state: str) -> None:
    if state not in StageStates.ALL:
        raise ValueError(f"unknown stage state {state!r}; expected one of {StageStates.ALL}")
