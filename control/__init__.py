"""Control plane: Cyclone DDS topics for lifecycle, heartbeats, requests, events, config, traces.

One DDS participant per process (``ControlPlane``), typed writers/readers whose QoS comes
from one table (control.topics), loopback-only DDS configured by the project
(control.ddsconfig), pipeline instances isolated by domain id + partition (control.naming).

    from control import ControlPlane, topics, messages
    with ControlPlane("default", "gateway") as plane:
        requests = plane.writer(topics.REQUEST)
        requests.write(messages.Request(request_id="r1", ...))

Modules:
    naming      instance names -> domain id, partition
    ddsconfig   the CYCLONEDDS_URI XML (loopback, unicast discovery)
    messages    IDL message types, string enums, to_dict
    topics      THE table: every topic, its type and its QoS
    plane       ControlPlane, Writer, Reader
    requests    RequestPublisher: a request on its topic and its modalities' topics
    aio         AsyncReader for asyncio code
    discovery   passive listing of nodes/topics with publisher/subscriber counts
    echo        read any topic as dicts

Names below are imported lazily so that `import control.naming` (CLI parsers) does not
load cyclonedds.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ControlPlane": "control.plane",
    "ControlPlaneError": "control.plane",
    "Reader": "control.plane",
    "ReaderSet": "control.plane",
    "Writer": "control.plane",
    "AsyncReader": "control.aio",
    "Discovery": "control.discovery",
    "list_topics": "control.discovery",
    "list_nodes": "control.discovery",
    "echo": "control.echo",
    "domain_id_for": "control.naming",
    "partition_for": "control.naming",
}

__all__ = sorted(_EXPORTS) + ["messages", "topics"]


def __getattr__(name: str):
    if name in ("messages", "topics"):
        return importlib.import_module(f"control.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'control' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
