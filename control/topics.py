"""Every control-plane topic and its QoS: the one table.

A topic's reliability, history, durability and ordering are decided here and nowhere
else; writers, readers and the inspection tools all build their QoS from this table.

Profiles (what each guarantees, and why it was chosen):

STREAM   reliable, keep-all, volatile, ordered by reception.
         Requests, cancels, stage events, lifecycle commands: every message matters and
         must arrive in the order its writer wrote it (the reliable protocol already
         delivers one writer's samples in write order). Volatile: a restarted stage must
         not replay yesterday's "shutdown" or an old request.
         Why not "by source timestamp": Cyclone then silently DROPS a sample whose source
         timestamp is older than the newest one already accepted for its instance (tested
         in tests/control/test_qos_table.py). On a keyless stream that means a wall-clock
         step back (NTP) or a second writer whose packet arrives late would lose requests.
         Cross-writer order, where needed, comes from the messages' ``t_mono_ns``.
LATEST   reliable, keep-last 1 per key, transient-local, ordered by source timestamp.
         Stage state and config: only the newest value per key matters, a late joiner
         (`autoglm node list`, a restarted stage) gets it at once, and when two writers
         set the same key the newest write wins in every reader alike.
SAMPLE   best-effort, keep-last 2 per key, volatile.
         Heartbeats: a lost beat is replaced by the next one a second later; retransmitting
         it would only delay fresher news.
TRACE    best-effort, keep-last 1024, volatile.
         Trace spans: high rate, must never slow a stage down; the depth absorbs bursts
         (a decode step ends many spans at once) before a reader takes them.

Observers (``autoglm topic echo/hz``, discovery tools) read STREAM topics best-effort
so a slow terminal never back-pressures the pipeline; on the other profiles they use
the topic's own reader QoS (LATEST observers thereby get the current values).

Every publisher and subscriber additionally carries the instance's partition
(control.naming), which is set by control.plane, not here.
"""
from __future__ import annotations

from dataclasses import dataclass

from cyclonedds.core import Policy, Qos
from cyclonedds.util import duration

from . import messages as m

# How long a reliable write may block when a reader's queue is full before it raises.
MAX_BLOCKING_S = 1.0


@dataclass(frozen=True)
class QosProfile:
    name: str
    reliable: bool
    keep_last: int | None  # None: keep-all
    transient_local: bool
    by_source_timestamp: bool
    observer_best_effort: bool  # observers read it best-effort (never back-pressure)
    observer_keep_last: int  # observers' history depth

    def _qos(self, *, reliable: bool, keep_last: int | None, by_source: bool) -> Qos:
        policies = [
            Policy.Reliability.Reliable(max_blocking_time=duration(seconds=MAX_BLOCKING_S))
            if reliable else Policy.Reliability.BestEffort,
            Policy.History.KeepAll if keep_last is None else Policy.History.KeepLast(keep_last),
            Policy.Durability.TransientLocal if self.transient_local else Policy.Durability.Volatile,
            Policy.DestinationOrder.BySourceTimestamp if by_source
            else Policy.DestinationOrder.ByReceptionTimestamp,
        ]
        return Qos(*policies)

    def writer_qos(self) -> Qos:
        return self._qos(reliable=self.reliable, keep_last=self.keep_last,
                         by_source=self.by_source_timestamp)

    def reader_qos(self) -> Qos:
        return self.writer_qos()

    def observer_qos(self) -> Qos:
        """For inspection tools: compatible with the writers, never slows them down."""
        reliable = self.reliable and not self.observer_best_effort
        # A transient-local observer still gets the history; by-reception matches any writer.
        return self._qos(reliable=reliable, keep_last=self.observer_keep_last, by_source=False)

    def describe(self) -> str:
        history = "keep-all" if self.keep_last is None else f"keep-last {self.keep_last}"
        return ", ".join([
            "reliable" if self.reliable else "best-effort",
            history,
            "transient-local" if self.transient_local else "volatile",
            "by-source-timestamp" if self.by_source_timestamp else "by-reception",
        ])


STREAM = QosProfile("stream", reliable=True, keep_last=None, transient_local=False,
                    by_source_timestamp=False, observer_best_effort=True, observer_keep_last=1024)
LATEST = QosProfile("latest", reliable=True, keep_last=1, transient_local=True,
                    by_source_timestamp=True, observer_best_effort=False, observer_keep_last=1)
SAMPLE = QosProfile("sample", reliable=False, keep_last=2, transient_local=False,
                    by_source_timestamp=False, observer_best_effort=True, observer_keep_last=2)
TRACE = QosProfile("trace", reliable=False, keep_last=1024, transient_local=False,
                   by_source_timestamp=False, observer_best_effort=True, observer_keep_last=1024)

# For topics outside this table that a tool reads by discovered type (`autoglm topic echo`
# on something a newer stage writes): best-effort matches any writer and never blocks it.
OBSERVE_UNKNOWN = QosProfile("observe-unknown", reliable=False, keep_last=1024,
                             transient_local=False, by_source_timestamp=False,
                             observer_best_effort=True, observer_keep_last=1024)


@dataclass(frozen=True)
class TopicSpec:
    """A control-plane topic: DDS name, message type, QoS profile, one-line purpose."""

    name: str
    type: type
    profile: QosProfile
    doc: str

    @property
    def short_name(self) -> str:
        return self.name.removeprefix(TOPIC_PREFIX)

    @property
    def type_name(self) -> str:
        """The type name as DDS announces it ("autoglm::control::Request")."""
        return self.type.__idl_typename__.replace(".", "::")


TOPIC_PREFIX = "autoglm/"

# ---------------------------------------------------------------------------- the table
LIFECYCLE_COMMAND = TopicSpec("autoglm/lifecycle/command", m.LifecycleCommand, STREAM,
                              "orders to stages: pause, resume, drain, shutdown, reload_config")
STAGE_STATE = TopicSpec("autoglm/lifecycle/state", m.StageState, LATEST,
                        "each stage's lifecycle state, pid, cores, restarts (keyed by stage)")
HEARTBEAT = TopicSpec("autoglm/heartbeat", m.Heartbeat, SAMPLE,
                      "1 Hz liveness of every stage (keyed by stage)")
REQUEST = TopicSpec("autoglm/request", m.Request, STREAM,
                    "generation requests; payloads referenced by shm (channel, slot, generation)")
# The same Request, also written to the topic of each modality it carries: a perception stage
# reads only the requests it has work in (a text request wakes no perception process).
REQUEST_IMAGE = TopicSpec("autoglm/request/image", m.Request, STREAM,
                          "the requests that carry images (the vision stage's work)")
REQUEST_AUDIO = TopicSpec("autoglm/request/audio", m.Request, STREAM,
                          "the requests that carry audio clips (the audio stage's work)")
TRANSCRIBE = TopicSpec("autoglm/transcribe", m.StageEvent, STREAM,
                       "transcription jobs, gateway -> audio stage (transcribe mode); answers "
                       "come back as done/error events")
CANCEL = TopicSpec("autoglm/cancel", m.Cancel, STREAM, "request cancellations")
STAGE_EVENT = TopicSpec("autoglm/event", m.StageEvent, STREAM,
                        "per-request progress: started, modality_ready, done, cancelled, error")
CONFIG = TopicSpec("autoglm/config", m.ConfigValue, LATEST,
                   "dynamic settings, JSON values (keyed by name; late joiners get the last)")
# Answers on a stream of their own: on the state topic (keep-last per stage) the next state
# a stage said could take an answer's place before `param set` read it.
CONFIG_ANSWER = TopicSpec("autoglm/config/answer", m.ConfigAnswer, STREAM,
                          "each stage's answer to a config value: applied, refused (why) or "
                          "ignored (its own names)")
TRACE_SPAN = TopicSpec("autoglm/trace", m.TraceSpan, TRACE, "timed spans for the profiler")

ALL_TOPICS: tuple[TopicSpec, ...] = (LIFECYCLE_COMMAND, STAGE_STATE, HEARTBEAT, REQUEST,
                                     REQUEST_IMAGE, REQUEST_AUDIO, TRANSCRIBE, CANCEL,
                                     STAGE_EVENT, CONFIG, CONFIG_ANSWER, TRACE_SPAN)
_BY_NAME = {spec.name: spec for spec in ALL_TOPICS}
# Modality -> the topic of the requests carrying it.
REQUEST_BY_MODALITY = {m.Modalities.IMAGE: REQUEST_IMAGE, m.Modalities.AUDIO: REQUEST_AUDIO}


def topic_by_name(name: str) -> TopicSpec:
    """Look a topic up by DDS name ("autoglm/request") or short name ("request")."""
    spec = _BY_NAME.get(name) or _BY_NAME.get(TOPIC_PREFIX + name.lstrip("/"))
    if spec is None:
        known = ", ".join(s.short_name for s in ALL_TOPICS)
        raise ValueError(f"unknown control topic {name!r}; known topics: {known}")
    return spec
