"""What `autoglm node list|info` shows: the stages of an instance, from a passive DDS reader
(stage states, heartbeats) plus the OS's own view of each process (cores, CPU%, RSS); with
endpoints, the DDS topics each publishes and subscribes (discovery) and the shm channels the
launch manifest gives it."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

from .spec import format_cores


@dataclass
class NodeRow:
    name: str
    pid: int
    state: str
    cores: str                  # read back from the OS (cpu_affinity), "?" if not readable
    heartbeat_age_s: float | None
    restarts: int
    cpu_percent: float | None
    rss_bytes: int | None
    alive: bool
    in_flight: int | None = None
    detail: str = ""
    cores_announced: str = ""   # what the stage said it pinned itself to
    publishes: list = field(default_factory=list)
    subscribes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def collect_nodes(instance: str, *, window_s: float = 1.2, endpoints: bool = False) -> list[NodeRow]:
    """Listen for `window_s` (a bit over one heartbeat period) and describe every stage."""
    import psutil
    from control import topics as t
    from control.discovery import Discovery
    from control.plane import ControlPlane

    with ControlPlane(instance, f"autoglm-node-{os.getpid()}") as plane:
        # The stage-state topic is transient-local: its current values arrive on matching.
        # The table's reader QoS (newest source timestamp wins) resolves stage vs launcher.
        r_state = plane.reader(t.STAGE_STATE)
        r_hb = plane.reader(t.HEARTBEAT, observer=True)
        disc = Discovery(plane) if endpoints else None
        procs: dict[int, psutil.Process] = {}
        heartbeats: dict[str, object] = {}
        states: dict[str, object] = {}
        deadline = time.monotonic() + window_s
        while True:
            left = deadline - time.monotonic()
            for hb in r_hb.take(timeout=max(0.0, min(left, 0.1))):
                heartbeats[hb.stage] = hb
                _prime(procs, hb.pid)
            for st in r_state.take(0):
                prev = states.get(st.stage)
                if prev is None or st.t_mono_ns >= prev.t_mono_ns:
                    states[st.stage] = st
                _prime(procs, st.pid)
            if left <= 0:
                break
        # CPU% needs a measuring interval: give the last process seen at least 0.25 s.
        if procs:
            time.sleep(max(0.0, max(getattr(p, "_primed", 0) for p in procs.values())
                           + 0.25 - time.monotonic()))
        now_ns = time.monotonic_ns()
        eps = disc.topics() if disc else []
        declared = _declared_channels(instance) if endpoints else {}
        rows = []
        for name in sorted(set(states) | set(heartbeats)):
            st, hb = states.get(name), heartbeats.get(name)
            pid = (hb.pid if hb else st.pid) or 0
            p = procs.get(pid)
            alive = p is not None and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            cores, cpu, rss = "?", None, None
            if alive:
                try:
                    with p.oneshot():
                        cores = format_cores(p.cpu_affinity())
                        cpu = p.cpu_percent(None)
                        rss = p.memory_info().rss
                except psutil.Error:
                    alive = False
            state = st.state if st else hb.state
            if hb is not None and (st is None or hb.t_mono_ns > st.t_mono_ns) and hb.pid == pid:
                state = hb.state
            if not alive:
                state = "dead"
            row = NodeRow(
                name=name, pid=pid, state=state, cores=cores,
                heartbeat_age_s=(now_ns - hb.t_mono_ns) / 1e9 if hb else None,
                restarts=int(st.restarts) if st else 0, cpu_percent=cpu, rss_bytes=rss,
                alive=alive, in_flight=int(hb.in_flight) if hb else None,
                detail=st.detail if st else "",
                cores_announced=format_cores(st.cores) if st and len(st.cores) else "")
            for info in eps:
                if any(e.node == name for e in info.publishers):
                    row.publishes.append(info.name)
                if any(e.node == name for e in info.subscribers):
                    row.subscribes.append(info.name)
            outputs, inputs = declared.get(name, ((), ()))
            row.publishes += outputs
            row.subscribes += inputs
            rows.append(row)
        return rows


def _declared_channels(instance: str) -> dict[str, tuple[list[str], list[str]]]:
    """Stage name -> (shm channels it writes, those it reads), from the launch manifest."""
    from .channels import read_manifest
    from .inspect_topics import SHM_PREFIX

    stages = (read_manifest(instance) or {}).get("stages", {})
    return {name: ([SHM_PREFIX + c for c in d.get("outputs", ())],
                   [SHM_PREFIX + c for c in d.get("inputs", ())]) for name, d in stages.items()}


def _prime(procs: dict, pid: int) -> None:
    """Start CPU accounting for `pid` so cpu_percent() at the end covers the window."""
    import psutil

    if pid and pid not in procs:
        try:
            p = psutil.Process(pid)
            p.cpu_percent(None)
            p._primed = time.monotonic()
            procs[pid] = p
        except psutil.Error:
            pass
