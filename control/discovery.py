"""Passive discovery of one pipeline instance: which nodes exist, which topics they publish
and subscribe to (for `autoglm topic list|info` and `autoglm node list`).

It reads only DDS's built-in discovery topics (DCPSParticipant, DCPSPublication,
DCPSSubscription) through the tool's own participant, so it creates no endpoint on any
pipeline topic: it cannot slow or perturb a stage. Endpoints are attributed to this
instance by their partition (control.naming), which also separates two instances whose
names hash to the same domain id.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from cyclonedds.builtin import BuiltinDataReader, BuiltinTopicDcpsParticipant, \
    BuiltinTopicDcpsPublication, BuiltinTopicDcpsSubscription
from cyclonedds.core import Policy
from cyclonedds.internal import InvalidSample

from .plane import ControlPlane
from .topics import ALL_TOPICS

# Discovery of peers on loopback completes in tens of milliseconds; tools wait this long
# by default so that a freshly started tool has seen everyone.
DEFAULT_SETTLE_S = 0.5


@dataclass
class NodeInfo:
    """A participant of the instance: a stage, the launcher or a tool."""

    key: uuid.UUID
    node: str
    pid: int
    instance: str


@dataclass
class EndpointInfo:
    key: uuid.UUID
    participant_key: uuid.UUID
    node: str  # node name of the owning participant ("?" if unknown)
    topic_name: str
    type_name: str
    reliable: bool
    durability: str


@dataclass
class TopicInfo:
    """What `autoglm topic list/info` prints for one topic."""

    name: str
    type_names: list[str]  # normally exactly one; more means a type mismatch
    publishers: list[EndpointInfo] = field(default_factory=list)
    subscribers: list[EndpointInfo] = field(default_factory=list)
    known: bool = False  # declared in control.topics (else written by something else)
    qos: str = ""  # the table's QoS description for known topics

    @property
    def publisher_count(self) -> int:
        return len(self.publishers)

    @property
    def subscriber_count(self) -> int:
        return len(self.subscribers)


class Discovery:
    """Snapshot of the instance's nodes and endpoints, refreshed by ``refresh()``.

    Create it once per tool (its built-in readers accumulate what DDS discovers) on a
    ControlPlane of the same instance, e.g. ``ControlPlane(instance, "autoglm-topic")``.
    """

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        p = plane.participant
        self._participants = BuiltinDataReader(p, BuiltinTopicDcpsParticipant)
        self._publications = BuiltinDataReader(p, BuiltinTopicDcpsPublication)
        self._subscriptions = BuiltinDataReader(p, BuiltinTopicDcpsSubscription)
        self._created = time.monotonic()

    def settle(self, settle_s: float = DEFAULT_SETTLE_S) -> None:
        """Sleep until ``settle_s`` has passed since creation (discovery time)."""
        left = self._created + settle_s - time.monotonic()
        if left > 0:
            time.sleep(left)

    def nodes(self, *, include_self: bool = False) -> list[NodeInfo]:
        """Participants of this instance that announced themselves (alive ones only)."""
        own = self.plane.participant.guid
        out = []
        for s in _alive(self._participants.read(N=4096)):
            info = _node_of(s)
            if info is None or info.instance != self.plane.instance:
                continue
            if s.key == own and not include_self:
                continue
            out.append(info)
        return sorted(out, key=lambda n: (n.node, n.pid))

    def topics(self) -> list[TopicInfo]:
        """Topics with at least one endpoint in this instance's partition, plus every
        topic of the table (with zero counts when nobody uses it)."""
        names = {n.key: n.node for n in self.nodes(include_self=True)}
        table = {spec.name: spec for spec in ALL_TOPICS}
        by_name: dict[str, TopicInfo] = {}
        for spec in ALL_TOPICS:
            by_name[spec.name] = TopicInfo(spec.name, [spec.type_name], known=True,
                                           qos=spec.profile.describe())
        for reader, attr in ((self._publications, "publishers"),
                             (self._subscriptions, "subscribers")):
            for s in _alive(reader.read(N=4096)):
                if not self._in_partition(s):
                    continue
                info = by_name.get(s.topic_name)
                if info is None:
                    info = by_name[s.topic_name] = TopicInfo(s.topic_name, [])
                if s.type_name not in info.type_names:
                    info.type_names.append(s.type_name)
                getattr(info, attr).append(_endpoint_of(s, names))
        for name, info in by_name.items():
            if name in table and table[name].type_name not in info.type_names[:1]:
                info.type_names.insert(0, table[name].type_name)
        return sorted(by_name.values(), key=lambda t: t.name)

    def topic(self, name: str) -> TopicInfo:
        for info in self.topics():
            if info.name == name:
                return info
        raise ValueError(f"no topic {name!r} in instance {self.plane.instance!r}")

    def _endpoints_with_type(self, topic_name: str) -> list:
        """Raw discovery samples of this instance's writers of ``topic_name`` that carry
        an XTypes type identifier (what a dynamic reader needs)."""
        return [s for s in _alive(self._publications.read(N=4096))
                if s.topic_name == topic_name and s.type_id is not None
                and self._in_partition(s)]

    def _in_partition(self, sample) -> bool:
        policy = sample.qos[Policy.Partition]
        partitions = policy.partitions if policy is not None else ("",)
        return self.plane.partition in partitions


def _alive(samples):
    # Disposed/unregistered endpoints come back as invalid samples or not-alive instances.
    from cyclonedds.core import InstanceState

    return [s for s in samples if not isinstance(s, InvalidSample)
            and s.sample_info.instance_state == InstanceState.Alive]


def _node_of(sample) -> NodeInfo | None:
    userdata = sample.qos[Policy.Userdata]
    if userdata is None:
        return None
    try:
        meta = json.loads(bytes(userdata.data).decode())
        return NodeInfo(sample.key, str(meta["node"]), int(meta["pid"]), str(meta["instance"]))
    except (ValueError, KeyError, TypeError):
        return None  # some other DDS application on this domain


def _endpoint_of(sample, names: dict) -> EndpointInfo:
    rel = sample.qos[Policy.Reliability]
    dur = sample.qos[Policy.Durability]
    return EndpointInfo(
        key=sample.key, participant_key=sample.participant_key,
        node=names.get(sample.participant_key, "?"), topic_name=sample.topic_name,
        type_name=sample.type_name,
        reliable=isinstance(rel, Policy.Reliability.Reliable),
        # The policy classes are nested ("Durability.TransientLocal"): keep the last part.
        durability=type(dur).__name__.rsplit(".", 1)[-1] if dur is not None else "Volatile")


def list_topics(plane: ControlPlane, settle_s: float = DEFAULT_SETTLE_S) -> list[TopicInfo]:
    """One-shot: the instance's topics with publisher/subscriber counts."""
    d = Discovery(plane)
    d.settle(settle_s)
    return d.topics()


def list_nodes(plane: ControlPlane, settle_s: float = DEFAULT_SETTLE_S) -> list[NodeInfo]:
    """One-shot: the instance's other participants (stages, launcher, tools)."""
    d = Discovery(plane)
    d.settle(settle_s)
    return d.nodes()
