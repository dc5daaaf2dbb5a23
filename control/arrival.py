"""A thread that sleeps in DDS until one of a ReaderSet's readers holds a message, and says
so in a plain attribute.

For a loop that asks between two pieces of work whether anything came: the decision stage,
between two engine steps, once per token. The call into DDS there cost 39 us (19 us on an
earlier VM), because a model step has just evicted the caches and the call runs cold; the
watched check, 6 us (benchmarks/control_poll.py, "cold", 2-core VM). The wait happens here
instead, in a thread that holds no GIL while it sleeps (ctypes releases it).

Protocol with the loop (control.plane.ReaderSet):

* Armed, the watcher sleeps in its own WaitSet (a read condition per reader, and a guard);
  when that wait returns it lowers ``_resume``, raises ``arrived`` and waits for ``_resume``.
  The loop, seeing ``arrived``, lowers it *before* asking DDS which readers hold something,
  takes from those, then calls ``resume()``; the watcher sleeps in DDS again, over whatever is
  left (a message that came after the loop looked wakes it at once). So no message is missed:
  it arrived either before the loop lowered the flag (and the loop's own look finds it) or
  after (and raises the flag again).
* Disarmed, it is parked and ``arrived`` stays up, so the loop asks DDS itself. The loop
  disarms before it sleeps in its own WaitSet (idle): were the watcher sleeping in DDS too, a
  request would wake two threads on the stage's core, and the watcher's turn came before the
  loop's (~0.15 ms more from the gateway's publication to the admission, 2-core VM). It arms
  once the loop looks twice in a row without sleeping, i.e. it is stepping an engine. Arming
  wakes the thread too, once per busy period, after the prefill: ~0.1 ms between the first
  token and the first decode step there, where it delays no first token.
"""
from __future__ import annotations

import ctypes as ct
import threading

from cyclonedds.core import DDSException, GuardCondition, InstanceState, ReadCondition, SampleState, \
    ViewState, WaitSet
from cyclonedds.util import duration

# Longest single sleep in DDS: the guard or a message ends it sooner.
_SLEEP_NS = duration(seconds=3600)


class ArrivalWatcher:
    def __init__(self, participant, data_readers, name: str = "inbox-watch") -> None:
        self.arrived = True          # up while disarmed: the loop asks DDS itself
        self.armed = False           # what _arm says, as an attribute the loop reads per token
        self._waitset = WaitSet(participant)
        self._conditions = [ReadCondition(dr, SampleState.Any | ViewState.Any | InstanceState.Any)
                            for dr in data_readers]
        for cond in self._conditions:
            self._waitset.attach(cond)
        self._bell = GuardCondition(participant)   # disarm or stop: out of the DDS wait
        self._waitset.attach(self._bell)
        self._stopping = self._dead = False
        self._in_dds = False         # the thread is in (or about to enter) its DDS wait
        self._rung = False           # the bell was rung and not yet reset
        self._arm = threading.Event()
        self._resume = threading.Event()
        # dds_waitset_wait itself: a ctypes call, which releases the GIL while it sleeps.
        self._wait = self._waitset._dll_handle.dds_waitset_wait
        self._triggered = (ct.c_void_p * (len(self._conditions) + 1))()
        # What dds_waitset_wait reports for the bell (the address it was attached with).
        self._bell_key = ct.addressof(self._waitset.attached[-1][1])
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._watch()
        except DDSException:   # its entities went with a closed plane
            pass
        finally:   # stopped: the loop goes back to asking DDS each time
            self._dead = True
            self.armed = False
            self.arrived = True

    def _watch(self) -> None:
        ws, out, n_out = self._waitset._ref, self._triggered, len(self._triggered)
        while True:
            self._arm.wait()
            if self._stopping:
                break
            if self._rung:   # rung by a disarm() whose wait had ended already: reset
                self._rung = False
                self._bell.take()
            self._in_dds = True
            if not self._arm.is_set():
                self._in_dds = False
                continue        # disarmed again meanwhile
            n = self._wait(ws, out, n_out, _SLEEP_NS)
            self._in_dds = False
            if n < 0 or self._stopping:
                break   # stopped, or an error: the plane was closed under it
            if self._bell_key in out[:n]:
                self._rung = False
                self._bell.take()   # rung by disarm(): reset, or the next wait ends at once
            self._resume.clear()
            self.arrived = True
            if self._arm.is_set():
                self._resume.wait()

    def arm(self) -> None:
        """The loop is stepping: sleep in DDS on its behalf."""
        if self._dead:
            return
        self.armed = True
        self._arm.set()

    def disarm(self) -> None:
        """The loop is about to sleep in DDS itself: park (``arrived`` stays up)."""
        self.armed = False
        self.arrived = True
        self._arm.clear()
        # Only a thread in its DDS wait needs the bell; one on its way there sees _arm cleared
        # first. (Ringing it on every disarm cost a DDS call here and one to reset it at the
        # next arm, in the thread hand-off between the first token and the first decode step.)
        if self._in_dds:
            self._rung = True
            self._bell.set(True)
        self._resume.set()

    def resume(self) -> None:
        """The loop took what the readers held: sleep in DDS again."""
        self._resume.set()

    def close(self, delete: bool = True) -> None:
        """Stop the thread (within milliseconds) and delete its DDS entities (``delete``
        False: a closed plane deleted them already)."""
        self._stopping = True
        self.armed = False
        try:
            self._bell.set(True)
        except Exception:  # deleted with a closed plane: the wait has ended already
            pass
        self._arm.set()
        self._resume.set()
        self._thread.join(timeout=5.0)
        if not delete:
            return
        for entity in (self._waitset, self._bell, *self._conditions):
            try:
                entity.__del__()   # now, not when the garbage collector gets to it
            except Exception:
                pass
