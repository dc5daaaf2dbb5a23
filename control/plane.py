"""One DDS participant per process: ``ControlPlane`` and its typed writers and readers.

Rules this module enforces (see docs of Cyclone DDS Python and shared/reference/IPC_NOTES.md):

* The participant is created in the process that uses it, after fork/spawn. A plane used
  from a forked child of its creator raises instead of sharing GUIDs and sockets.
* Participants are created under one process-wide lock (Cyclone dislikes concurrent
  creation from two threads).
* DDS is configured from control.ddsconfig (loopback only), through an explicit Cyclone
  ``Domain`` entity, so the user's CYCLONEDDS_URI plays no part; the variable is also
  overwritten in this process so any child tool inherits the project's configuration.
* No Listeners (they run on Cyclone's receive thread and have deadlocked on the GIL).
  Readers block in a WaitSet, whose wait releases the GIL; ``AsyncReader`` (control.aio)
  wraps that for asyncio.
"""
from __future__ import annotations

import ctypes as ct
import json
import os
import threading
import time
from typing import Generic, Iterator, TypeVar

from cyclonedds.core import DDSException, GuardCondition, Policy, Qos, ReadCondition, SampleState, ViewState, \
    InstanceState, WaitSet
from cyclonedds.domain import Domain, DomainParticipant
from cyclonedds.internal import InvalidSample
from cyclonedds.pub import DataWriter, Publisher
from cyclonedds.sub import DataReader, Subscriber
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from .ddsconfig import domain_xml
from .naming import domain_id_for, partition_for, validate_domain_id, validate_instance, \
    validate_node_name
from .topics import TopicSpec

T = TypeVar("T")

# Samples taken per DDS call; a reader hands them out one by one.
TAKE_BATCH = 256

_create_lock = threading.Lock()
# domain id -> [Domain entity, users, xml]; one Domain entity per id per process.
_domains: dict[int, list] = {}


class ControlPlaneError(RuntimeError):
    """Misuse of the control plane (used after close, or across a fork)."""


def _acquire_domain(domain_id: int, multicast: bool) -> None:
    xml = domain_xml(domain_id, multicast=multicast)
    entry = _domains.get(domain_id)
    if entry is None:
        os.environ["CYCLONEDDS_URI"] = xml
        _domains[domain_id] = [Domain(domain_id, xml), 1, xml]
    elif entry[2] != xml:
        raise ControlPlaneError(
            f"DDS domain {domain_id} is already open in this process with another "
            "configuration (multicast setting differs)")
    else:
        entry[1] += 1


def _release_domain(domain_id: int) -> None:
    entry = _domains.get(domain_id)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _domains[domain_id]
        _delete_entity(entry[0])


def _delete_entity(entity) -> None:
    # cyclonedds deletes an entity (and its children) in __del__; call it now instead of
    # waiting for the garbage collector. A second __del__ later is a no-op.
    entity.__del__()


class ControlPlane:
    """The control-plane connection of one process (one DDS participant).

    ``instance`` names the pipeline (isolation: domain id + partition, see control.naming);
    ``node_name`` names this process in discovery (`autoglm node list`, message ``source``).
    ``domain_id`` overrides the id derived from the instance name (every process of the
    instance and every tool must then be given the same id).
    """

    def __init__(self, instance: str, node_name: str, *, domain_id: int | None = None,
                 multicast: bool = False) -> None:
        self.instance = validate_instance(instance)
        self.node_name = validate_node_name(node_name)
        self.domain_id = validate_domain_id(domain_id) if domain_id is not None \
            else domain_id_for(instance)
        self.partition = partition_for(instance)
        self.pid = os.getpid()
        self._closed = False
        self._topics: dict[str, Topic] = {}
        self._endpoints: list = []
        with _create_lock:
            _acquire_domain(self.domain_id, multicast)
            try:
                # User data announces who this participant is to discovery tools.
                userdata = json.dumps({"instance": instance, "node": node_name,
                                       "pid": self.pid}).encode()
                self._participant = DomainParticipant(
                    self.domain_id, qos=Qos(Policy.Userdata(userdata)))
                part = Qos(Policy.Partition([self.partition]))
                self._publisher = Publisher(self._participant, qos=part)
                self._subscriber = Subscriber(self._participant, qos=part)
            except BaseException:
                _release_domain(self.domain_id)
                raise

    # ------------------------------------------------------------------ properties
    @property
    def participant(self) -> DomainParticipant:
        self._check_usable()
        return self._participant

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_usable(self) -> None:
        if self._closed:
            raise ControlPlaneError(f"control plane of node {self.node_name!r} is closed")
        if os.getpid() != self.pid:
            raise ControlPlaneError(
                f"control plane of node {self.node_name!r} was created in process {self.pid} "
                f"and used in process {os.getpid()}: create the ControlPlane in the child, "
                "after fork/spawn")

    # ------------------------------------------------------------------ endpoints
    def topic(self, spec: TopicSpec) -> Topic:
        """The participant's DDS Topic for ``spec`` (created once)."""
        self._check_usable()
        if not isinstance(spec, TopicSpec):
            raise TypeError(f"expected a control.topics.TopicSpec, got {type(spec).__name__}")
        topic = self._topics.get(spec.name)
        if topic is None:
            topic = Topic(self._participant, spec.name, spec.type)
            self._topics[spec.name] = topic
        return topic

    def writer(self, spec: TopicSpec) -> "Writer":
        """A writer of ``spec`` with the QoS of the topic table."""
        w = Writer(self, spec)
        self._endpoints.append(w)
        return w

    def reader(self, spec: TopicSpec, *, observer: bool = False,
               own_writes: bool = True) -> "Reader":
        """A reader of ``spec``. ``observer=True`` uses the table's observer QoS: for tools
        that watch without back-pressuring the pipeline (see control.topics).
        ``own_writes=False``: samples of this plane's own writers are not delivered to it
        (DDS ignore-local), so a process is not woken to deserialise what it wrote itself."""
        r = Reader(self, spec, observer=observer, own_writes=own_writes)
        self._endpoints.append(r)
        return r

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Delete the participant and everything created from it. Idempotent."""
        if self._closed:
            return
        if os.getpid() != self.pid:
            # A forked copy must not tear down its parent's DDS entities.
            self._closed = True
            return
        self._closed = True
        for endpoint in self._endpoints:
            endpoint._wake()
        with _create_lock:
            _delete_entity(self._participant)
            _release_domain(self.domain_id)

    def __enter__(self) -> "ControlPlane":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"ControlPlane(instance={self.instance!r}, node={self.node_name!r}, "
                f"domain={self.domain_id}, {state})")


class Writer(Generic[T]):
    """Typed writer of one topic. ``write`` stamps ``t_mono_ns`` and fills ``source``."""

    def __init__(self, plane: ControlPlane, spec: TopicSpec) -> None:
        self.plane = plane
        self.spec = spec
        self._dw = DataWriter(plane._publisher, plane.topic(spec), qos=spec.profile.writer_qos())

    def write(self, message: T, *, stamp: bool = True) -> None:
        """Publish ``message``. With ``stamp`` (default) its ``t_mono_ns`` is set to now,
        so it records the send time; pass ``stamp=False`` to relay a message unchanged."""
        self.plane._check_usable()
        if not isinstance(message, self.spec.type):
            raise TypeError(f"topic {self.spec.name} carries {self.spec.type.__name__}, "
                            f"not {type(message).__name__}")
        if not message.source:
            message.source = self.plane.node_name
        if stamp:
            message.t_mono_ns = time.monotonic_ns()
        self._dw.write(message)

    def dispose(self, message: T) -> None:
        """Mark the instance with ``message``'s key as gone (keyed topics only)."""
        self.plane._check_usable()
        self._dw.dispose(message)

    def wait_for_acks(self, timeout: float = 5.0) -> bool:
        """Wait until every matched reliable reader has acknowledged what this writer wrote;
        False on timeout."""
        self.plane._check_usable()
        return bool(self._dw.wait_for_acks(int(timeout * 1e9)))

    @property
    def matched_readers(self) -> int:
        return self._dw.get_publication_matched_status().current_count

    def wait_for_readers(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until ``count`` readers are matched (discovery done); False on timeout."""
        return _poll(lambda: self.matched_readers >= count, timeout)

    def _wake(self) -> None:
        pass


class Reader(Generic[T]):
    """Typed reader of one topic.

    ``take(timeout)`` waits up to ``timeout`` seconds for data and returns what is there;
    iterating (``for msg in reader``) blocks until data arrives and stops when the plane is
    closed. Only valid samples are returned (dispose/unregister notices are skipped).
    Each returned message keeps cyclonedds' ``sample_info`` attribute.
    """

    def __init__(self, plane: ControlPlane, spec: TopicSpec, *, observer: bool = False,
                 own_writes: bool = True) -> None:
        self.plane = plane
        self.spec = spec
        self.observer = observer
        qos = spec.profile.observer_qos() if observer else spec.profile.reader_qos()
        if not own_writes:
            qos = qos + Qos(Policy.IgnoreLocal.Participant)
        self._dr = DataReader(plane._subscriber, plane.topic(spec), qos=qos)
        self._waitset = WaitSet(plane._participant)
        self._data_cond = ReadCondition(
            self._dr, SampleState.Any | ViewState.Any | InstanceState.Any)
        self._guard = GuardCondition(plane._participant)
        self._waitset.attach(self._data_cond)
        self._waitset.attach(self._guard)
        self._pending: list = []

    def take(self, timeout: float | None = 0.0, max_samples: int = TAKE_BATCH) -> list[T]:
        """Up to ``max_samples`` messages; waits up to ``timeout`` s for the first one
        (0: do not wait, None: wait until data arrives or the plane closes)."""
        self.plane._check_usable()
        out = self._drain(max_samples)
        if out or timeout == 0:
            return out
        deadline = None if timeout is None else time.monotonic() + timeout
        while not out:
            if deadline is None:
                wait_ns = duration(seconds=3600)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait_ns = max(1, int(left * 1e9))
            try:
                self._waitset.wait(wait_ns)
                if self.plane.closed:
                    break
                out = self._drain(max_samples)
                if self._guard.take():  # wake() was called: return early, even empty
                    break
            except DDSException:
                if self.plane.closed:  # closed by another thread while we waited
                    break
                raise
        return out

    def take_one(self, timeout: float | None = 0.0) -> T | None:
        """One message, or None if none arrived within ``timeout`` seconds."""
        got = self.take(timeout, max_samples=1)
        return got[0] if got else None

    def read_current(self) -> list[T]:
        """The samples the reader holds now, without removing them: for LATEST topics,
        the newest value of every key (stage states, config)."""
        self.plane._check_usable()
        return [s for s in self._dr.read(N=TAKE_BATCH) if not isinstance(s, InvalidSample)]

    def __iter__(self) -> Iterator[T]:
        while not self.plane.closed:
            yield from self.take(timeout=None)

    def _drain(self, max_samples: int) -> list[T]:
        if not self._pending:
            self._pending = [s for s in self._dr.take(N=TAKE_BATCH)
                             if not isinstance(s, InvalidSample)]
        out, self._pending = self._pending[:max_samples], self._pending[max_samples:]
        return out

    @property
    def matched_writers(self) -> int:
        return self._dr.get_subscription_matched_status().current_count

    def wait_for_writers(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until ``count`` writers are matched; False on timeout."""
        return _poll(lambda: self.matched_writers >= count, timeout)

    def wait_for_historical_data(self, timeout: float = 5.0) -> bool:
        """For transient-local topics: wait until matched writers delivered their history."""
        return self._dr.wait_for_historical_data(duration(seconds=timeout))

    def close(self) -> None:
        """Delete this reader, its plane staying open: writers stop sending to it (each
        matched reader of another process costs every write a send and that process a
        wake-up). Not to be called while another thread waits in take()."""
        if self.plane.closed:
            return
        _delete_entity(self._dr)   # its read conditions go with it
        _delete_entity(self._waitset)
        _delete_entity(self._guard)
        self._pending = []

    def wake(self) -> None:
        """Make a take() blocked in another thread return now (possibly empty)."""
        try:
            self._guard.set(True)
        except Exception:  # the entity is gone with a closed plane: nothing blocks on it
            pass

    _wake = wake


class ReaderSet:
    """Sleeps until any of several readers of one plane holds a message: one WaitSet over a
    read condition per reader. An idle stage blocks here instead of sleeping a fixed slice,
    so a request or event is handled within microseconds of its arrival. ``wake()`` (from
    another thread) ends the wait at once, and every later one: it is how a stage's shutdown
    reaches its sleeping main loop.

    ``watched=True`` adds a thread that sleeps in DDS over the same readers
    (control.arrival.ArrivalWatcher): ``take_ready()`` then costs an attribute read, not a
    call into DDS, while nothing has arrived. For a loop that asks between two engine steps."""

    def __init__(self, plane: ControlPlane, readers: list[Reader], *, watched: bool = False) -> None:
        self.plane = plane
        self.readers = list(readers)
        self._waitset = WaitSet(plane._participant)
        for r in self.readers:
            if r.plane is not plane:
                raise ControlPlaneError(f"reader of {r.spec.name} belongs to another plane")
            self._waitset.attach(ReadCondition(
                r._dr, SampleState.Any | ViewState.Any | InstanceState.Any))
        self._woken = GuardCondition(plane._participant)
        self._waitset.attach(self._woken)
        # dds_waitset_wait itself, for ready() and wait(): without cyclonedds' wrapper and its
        # checks, the cold-cache call took 19 us against 26 (benchmarks/control_poll.py, run
        # of 7de449f; 35 against 66 in an earlier one: the host varies). It fills `_triggered`
        # with the attach values (the address cyclonedds attached each condition with) of the
        # conditions that hold, so a wait also says which readers ended it.
        self._wait_now = self._waitset._dll_handle.dds_waitset_wait
        attached = self._waitset.attached          # [(entity, c_int attach value)] in order
        self._reader_of = {ct.addressof(value): r for r, (_, value) in zip(self.readers, attached)}
        self._triggered = (ct.c_void_p * len(attached))()
        self._watcher = None
        self._looks = 0   # take_ready() calls since the last wait()
        self._woken_by: list[Reader] | None = None   # the readers that ended the last wait()
        if watched:
            from .arrival import ArrivalWatcher
            self._watcher = ArrivalWatcher(plane._participant, [r._dr for r in self.readers])

    def wait(self, timeout: float) -> bool:
        """True as soon as some reader has a message, False after ``timeout`` s without."""
        self.plane._check_usable()
        if any(r._pending for r in self.readers):  # taken from DDS, not handed out yet
            self._woken_by = None   # take_ready() looks itself
            return True
        self._looks = 0
        if self._watcher is not None and self._watcher.armed:
            self._watcher.disarm()   # one thread in DDS per message (control.arrival)
        try:
            # The wait says which readers ended it: the take_ready() that follows needs no
            # second call into DDS to learn it (~20-40 us with the caches cold).
            n, self._woken_by = self._look(max(1, int(timeout * 1e9)))
        except DDSException:
            if self.plane.closed:  # closed by another thread while we waited
                return False
            raise
        return n > 0   # a reader, or wake()

    def ready(self) -> list[Reader]:
        """The readers that hold a message now, in the set's order, without waiting: one DDS
        call, and then a take only where there is something (an empty take is ~6 us with a
        cold cache, per reader)."""
        self._woken_by = None   # superseded by this look
        try:
            return self._look(0)[1]
        except DDSException:
            self.plane._check_usable()   # a closed plane says so
            raise

    def _look(self, timeout_ns: int) -> tuple[int, list[Reader]]:
        """dds_waitset_wait itself (the wrapper and its checks cost a cold call ~7 us more):
        (conditions that hold, the readers among them or with samples taken but not handed
        out, in the set's order)."""
        n = self._wait_now(self._waitset._ref, self._triggered, len(self._triggered), timeout_ns)
        if n < 0:
            raise DDSException(n, "while waiting for the readers' messages")
        if not n:
            return 0, [r for r in self.readers if r._pending]
        hit = {self._reader_of.get(self._triggered[i]) for i in range(n)}
        return n, [r for r in self.readers if r in hit or r._pending]

    def take_ready(self) -> list[tuple[Reader, list]]:
        """Take what the readers hold now: (reader, messages) in the set's order, without
        waiting. In a watched set, [] at once while the watcher has seen nothing arrive; the
        watcher is armed at the second call without a wait() in between. Right after a wait(),
        the readers that ended it are taken from (one that got a message since is seen at the
        next call)."""
        watcher = self._watcher
        if watcher is not None:
            if not watcher.arrived:
                return []
            if not watcher.armed:
                self._looks += 1
                if self._looks >= 2:
                    watcher.arm()
            if watcher.armed:
                watcher.arrived = False   # before looking: what comes next raises it again
        woken_by, self._woken_by = self._woken_by, None
        try:
            got = [(r, r.take(0)) for r in (self.ready() if woken_by is None else woken_by)]
        finally:
            if watcher is not None:
                watcher.resume()
        return [(r, msgs) for r, msgs in got if msgs]

    def wake(self) -> None:
        """End the current wait, and every later one, at once (thread-safe)."""
        try:
            self._woken.set(True)
        except Exception:  # deleted with a closed plane or set: nothing waits on it
            pass

    def close(self) -> None:
        """Stop the watcher, delete the WaitSet (the readers stay open)."""
        if self._watcher is not None:
            self._watcher.close(delete=not self.plane.closed)
        if not self.plane.closed:
            _delete_entity(self._waitset)
            _delete_entity(self._woken)


def _poll(predicate, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
