"""Read any topic of an instance and yield its messages as plain dicts (`autoglm topic echo`).

Topics of the table (control.topics) are read with their own type and the table's
observer QoS: best-effort for streams, so a slow terminal never back-pressures the
pipeline; the state and config topics deliver their current values at once. A topic the
table does not know (written by something newer) is read through its discovered XTypes
type, best-effort.
"""
from __future__ import annotations

import json
import time
from typing import Iterator

from .discovery import Discovery
from .messages import to_dict
from .plane import ControlPlane, Reader
from .topics import OBSERVE_UNKNOWN, TopicSpec, topic_by_name

# Key added to each dict when ``receive_time=True``: time.monotonic_ns() at reception.
RX_KEY = "_rx_mono_ns"


def resolve_topic(plane: ControlPlane, name: str, *, discover_timeout_s: float = 2.0) -> TopicSpec:
    """The TopicSpec for ``name``: from the table, else from the type a writer announced."""
    try:
        return topic_by_name(name)
    except ValueError as table_miss:
        from cyclonedds.dynamic import get_types_for_typeid
        from cyclonedds.util import duration

        discovery = Discovery(plane)
        deadline = time.monotonic() + discover_timeout_s
        while True:
            for info in discovery.topics():
                if info.name != name or info.known:
                    continue
                for ep in discovery._endpoints_with_type(name):
                    dtype, _ = get_types_for_typeid(plane.participant, ep.type_id,
                                                    duration(seconds=discover_timeout_s))
                    return TopicSpec(name, dtype, OBSERVE_UNKNOWN, "discovered at run time")
            if time.monotonic() >= deadline:
                raise table_miss
            time.sleep(0.05)


def echo(plane: ControlPlane, topic: str | TopicSpec, *, max_messages: int | None = None,
         duration_s: float | None = None, receive_time: bool = False) -> Iterator[dict]:
    """Yield the topic's messages as dicts until ``max_messages`` or ``duration_s``
    (None: forever, until the plane closes)."""
    spec = topic if isinstance(topic, TopicSpec) else resolve_topic(plane, topic)
    reader: Reader = plane.reader(spec, observer=True)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    seen = 0
    while max_messages is None or seen < max_messages:
        if deadline is None:
            timeout = 0.5
        else:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return
        if plane.closed:
            return
        for msg in reader.take(timeout=min(timeout, 0.5)):
            record = to_dict(msg)
            if receive_time:
                record[RX_KEY] = time.monotonic_ns()
            yield record
            seen += 1
            if max_messages is not None and seen >= max_messages:
                return


def format_record(record: dict) -> str:
    """One line of JSON, as `autoglm topic echo` prints it."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str)
