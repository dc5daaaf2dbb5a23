"""The lifecycle of a stage: starting -> ready <-> busy -> stopping -> dead.

`dead` is also set by the supervisor on behalf of a stage that stopped heartbeating or exited.
"""
from __future__ import annotations

import enum
import threading

from control.messages import StageStates


class State(str, enum.Enum):
    STARTING = StageStates.STARTING
    READY = StageStates.READY
    BUSY = StageStates.BUSY
    STOPPING = StageStates.STOPPING
    DEAD = StageStates.DEAD


_ALLOWED = {
    State.STARTING: {State.READY, State.STOPPING, State.DEAD},
    State.READY: {State.BUSY, State.STOPPING, State.DEAD},
    State.BUSY: {State.READY, State.STOPPING, State.DEAD},
    State.STOPPING: {State.DEAD},
    State.DEAD: set(),
}


class IllegalTransition(RuntimeError):
    pass


class Lifecycle:
    """Thread-safe state holder; `on_change(old, new)` runs after every transition."""

    def __init__(self, on_change=None):
        self._state = State.STARTING
        self._lock = threading.Lock()
        self._on_change = on_change

    @property
    def state(self) -> State:
        return self._state

    def to(self, new: State) -> bool:
        """Move to `new`; a repeat of the current state is a no-op (returns False)."""
        new = State(new)
        with self._lock:
            old = self._state
            if new == old:
                return False
            if new not in _ALLOWED[old]:
                raise IllegalTransition(f"lifecycle: {old.value} -> {new.value} is not allowed")
            self._state = new
        if self._on_change:
            self._on_change(old, new)
        return True
