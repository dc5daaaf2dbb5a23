"""A thread that sleeps in DDS until one of a ReaderSet's readers holds a message, and says
so in a plain attribute.

For a loop that asks between two pieces of work whether anything came: the decision stage,
between two engine steps, once per token. The call into DDS there cost 38 us (19 us on an
earlier VM), because a model step has just evicted the caches and the call runs cold; the
watched check, 7 us (benchmarks/control_poll.py, "cold", 2-core VM). The wait happens here instead, in a thread that
holds no GIL while it sleeps (ctypes releases it) and wakes only when a message arrives.

Protocol with the loop (control.plane.ReaderSet.take_ready):

* the watcher sleeps in its own WaitSet (a read condition per reader, and a guard to stop it);
  when that wait returns it lowers ``_resume``, raises ``arrived`` and waits for ``_resume``;
* the loop, seeing ``arrived``, lowers it *before* asking DDS which readers hold something,
  takes from those, then calls ``resume()``; the watcher sleeps in DDS again, over whatever
  is left (a message that came after the loop looked wakes it at once).

So a message is never missed: it either arrived before the loop lowered the flag (and the
loop's own look finds it) or after (and raises the flag again). The cost is one wake-up of
this thread per batch of messages, not per step.
"""
from __future__ import annotations

import ctypes as ct
import threading

from cyclonedds.core import GuardCondition, InstanceState, ReadCondition, SampleState, ViewState, \
    WaitSet
from cyclonedds.util import duration

# Longest single sleep in DDS: the guard or a message ends it sooner.
_SLEEP_NS = duration(seconds=3600)


class ArrivalWatcher:
    def __init__(self, participant, data_readers, name: str = "inbox-watch") -> None:
        self.arrived = True          # until the watcher has looked, the loop asks DDS itself
        self._waitset = WaitSet(participant)
        self._conditions = [ReadCondition(dr, SampleState.Any | ViewState.Any | InstanceState.Any)
                            for dr in data_readers]
        for cond in self._conditions:
            self._waitset.attach(cond)
        self._stop = GuardCondition(participant)
        self._waitset.attach(self._stop)
        self._stopping = False
        self._resume = threading.Event()
        # dds_waitset_wait itself: a ctypes call, which releases the GIL while it sleeps.
        self._wait = self._waitset._dll_handle.dds_waitset_wait
        self._triggered = (ct.c_void_p * (len(self._conditions) + 1))()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ws, out, n_out = self._waitset._ref, self._triggered, len(self._triggered)
        while not self._stopping:
            if self._wait(ws, out, n_out, _SLEEP_NS) < 0 or self._stopping:
                break   # an error: the plane was closed under it
            self._resume.clear()
            self.arrived = True
            self._resume.wait()
        self.arrived = True   # stopped: the loop goes back to asking DDS each time

    def resume(self) -> None:
        """The loop took what the readers held: sleep in DDS again."""
        self._resume.set()

    def close(self, delete: bool = True) -> None:
        """Stop the thread (within milliseconds) and delete its DDS entities (``delete``
        False: a closed plane deleted them already)."""
        self._stopping = True
        try:
            self._stop.set(True)
        except Exception:  # deleted with a closed plane: the wait has ended already
            pass
        self._resume.set()
        self._thread.join(timeout=5.0)
        if not delete:
            return
        for entity in (self._waitset, self._stop, *self._conditions):
            try:
                entity.__del__()   # now, not when the garbage collector gets to it
            except Exception:
                pass
