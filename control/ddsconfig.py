"""The Cyclone DDS configuration the project runs with, built here, never taken from the user.

A pipeline lives on one machine, so DDS is pinned to the loopback interface: nothing is
sent on a real network, and a user's CYCLONEDDS_URI (tuned for their robots, or simply
broken) cannot change how the stages find each other.

Discovery on loopback: Linux's `lo` has no MULTICAST flag. Cyclone 11 still "presumes
robust multicast" on it and that works on this kernel, but it is an assumption about the
host (containers and hardened kernels differ), so the default is unicast-only discovery:
multicast off, one peer (127.0.0.1) and automatic participant indices. Each participant
binds the well-known unicast port of the first free index (7410 + 250*domain + 2*index)
and sends its SPDP announcements to every index port up to MAX_PARTICIPANTS, so peers in
other processes find it within milliseconds. Measured here: a late joiner 36 s after the
first participant (past the 30 s peer prune delay) is still matched in ~30 ms.
``multicast=True`` gives the multicast variant for hosts where that is preferred.
"""
from __future__ import annotations

import os

from .naming import validate_domain_id

# Participants of one pipeline instance (stages, launcher, CLI tools, tests) that can exist
# at once. Index ports stay inside the domain's 250-port block: 10 + 2*60 + 1 < 250.
MAX_PARTICIPANTS = 60
# How fast a crashed process's endpoints disappear from discovery (Cyclone's default is 10 s).
# Liveness of stages is judged by heartbeats, not by this lease.
LEASE_DURATION_S = 5

# Set AUTOGLM_DDS_TRACE=/path/file.log to get Cyclone's own trace (discovery, config).
TRACE_ENV = "AUTOGLM_DDS_TRACE"


def domain_xml(domain_id: int, *, multicast: bool = False, trace_file: str | None = None) -> str:
    """The CYCLONEDDS_URI XML for one domain, loopback only.

    ``trace_file`` defaults to $AUTOGLM_DDS_TRACE (unset: no tracing).
    """
    validate_domain_id(domain_id)
    if trace_file is None:
        trace_file = os.environ.get(TRACE_ENV) or None
    if multicast:
        interfaces = '<Interfaces><NetworkInterface name="lo" multicast="true"/></Interfaces>'
        discovery = ""
    else:
        interfaces = (
            '<Interfaces><NetworkInterface name="lo"/></Interfaces>'
            "<AllowMulticast>false</AllowMulticast>"
        )
        discovery = (
            "<ParticipantIndex>auto</ParticipantIndex>"
            f"<MaxAutoParticipantIndex>{MAX_PARTICIPANTS}</MaxAutoParticipantIndex>"
            '<Peers><Peer address="127.0.0.1"/></Peers>'
        )
    tracing = ""
    if trace_file:
        tracing = (
            "<Tracing><Category>config,discovery</Category>"
            f"<OutputFile>{_xml_text(trace_file)}</OutputFile></Tracing>"
        )
    return (
        f'<CycloneDDS><Domain id="{domain_id}">'
        f"<General>{interfaces}</General>"
        f"<Discovery>{discovery}<LeaseDuration>{LEASE_DURATION_S} s</LeaseDuration></Discovery>"
        f"{tracing}"
        "</Domain></CycloneDDS>"
    )


def _xml_text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
