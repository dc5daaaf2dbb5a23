"""What `autoglm topic list|info|echo|hz|bw` do, for DDS topics and shm channels alike.

Names: a DDS topic by its full name ("autoglm/request") or short name ("request"); a shm
channel as "shm/NAME" (or plain NAME when no DDS topic has that name).

Rates of shm channels come from the producer's own counters (`written` in the channel header)
and commit timestamps, so a slow inspector never under-reports; rates of DDS topics come from
the writers' `t_mono_ns` stamps of the samples received.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

SHM_PREFIX = "shm/"


@dataclass
class TopicRow:
    name: str
    plane: str                 # "dds" or "shm"
    type: str
    publishers: list = field(default_factory=list)    # node names / pids
    subscribers: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "plane": self.plane, "type": self.type,
                "publishers": self.publishers, "subscribers": self.subscribers, **self.extra}


def _plane(instance: str, tool: str):
    from control.plane import ControlPlane

    return ControlPlane(instance, f"autoglm-{tool}-{os.getpid()}")


def _shm_rows(instance: str) -> list[TopicRow]:
    from shm.errors import InstanceNotFoundError
    from shm.registry import Registry

    try:
        chans = Registry(instance).channels()
    except InstanceNotFoundError:
        return []
    from shm.inflight import board_writer_pid

    from .channels import read_manifest

    stages = (read_manifest(instance) or {}).get("stages", {})
    stage_of_pid = {pid: s for s in stages if (pid := board_writer_pid(instance, s))}
    rows = []
    for c in chans:
        typ = f"{c.kind}[{c.count} x {c.item_bytes} B]"
        live = [(c.producer_pid, c.producer_alive)] if c.producer_pid else []
        pubs = _endpoints([s for s, d in stages.items() if c.name in d["outputs"]], live,
                          stage_of_pid)
        subs = _endpoints([s for s, d in stages.items() if c.name in d["inputs"]],
                          [(x["pid"], x["alive"]) for x in c.consumers], stage_of_pid)
        extra = {"written": c.written, "read": c.read, "dropped": c.dropped,
                 "kind": c.kind, "item_bytes": c.item_bytes, "count": c.count}
        if c.kind == "pool":
            extra["in_use"] = c.in_use
            subs = subs or _pool_holders(instance, c.name)
        else:
            extra["consumers"] = c.consumers
        rows.append(TopicRow(SHM_PREFIX + c.name, "shm", typ, pubs, subs, extra))
    return rows


def _endpoints(declared: list[str], live: list[tuple[int, bool]],
               stage_of_pid: dict[int, str]) -> list[str]:
    """A channel's endpoints: the stages the launch manifest declares, each with the pid the
    OS shows at the channel when it is that stage's process ("decision (pid 812)"), then the
    live pids no declared stage accounts for (a tool, a stage's earlier process)."""
    named = {name: name for name in declared}
    rest = []
    for pid, alive in live:
        state = "" if alive else ", dead"
        stage = stage_of_pid.get(pid)
        if stage in named and named[stage] == stage:
            named[stage] = f"{stage} (pid {pid}{state})"
        else:
            rest.append(f"pid {pid}" + ("" if alive else " (dead)"))
    return list(named.values()) + rest


def _pool_holders(instance: str, name: str) -> list[str]:
    """Processes holding slots of a pool right now (a pool has no subscriber list)."""
    from .shm_peek import PoolPeeker

    try:
        p = PoolPeeker(instance, name)
    except OSError:
        return []
    try:
        pids = {int(x) for x in p._slots["holder_pid"].ravel() if x}
        return [f"pid {pid} (holding)" for pid in sorted(pids)]
    finally:
        p.close()


def list_topics(instance: str, settle_s: float = 0.5) -> list[TopicRow]:
    from control.discovery import Discovery

    rows = []
    with _plane(instance, "topic") as plane:
        d = Discovery(plane)
        d.settle(settle_s)
        for t in d.topics():
            rows.append(TopicRow(
                t.name, "dds", " | ".join(t.type_names),
                sorted(e.node for e in t.publishers), sorted(e.node for e in t.subscribers),
                {"qos": t.qos}))
    # The tool's own participant creates no endpoints, so it never appears above.
    return rows + _shm_rows(instance)


def resolve(instance: str, name: str):
    """('dds', TopicSpec) or ('shm', ChannelInfo); ValueError naming what exists."""
    from control.topics import ALL_TOPICS, topic_by_name
    from shm.errors import ChannelNotFoundError, InstanceNotFoundError
    from shm.registry import Registry

    if not name.startswith(SHM_PREFIX):
        try:
            return "dds", topic_by_name(name)
        except ValueError:
            pass
    ch = name.removeprefix(SHM_PREFIX)
    try:
        return "shm", Registry(instance).channel(ch)
    except (ChannelNotFoundError, InstanceNotFoundError):
        pass
    try:
        shm_names = [SHM_PREFIX + c.name for c in Registry(instance).channels()]
    except InstanceNotFoundError:
        shm_names = []
    known = [t.short_name for t in ALL_TOPICS] + shm_names
    raise ValueError(f"no topic or channel {name!r} in instance {instance!r} "
                     f"(known: {', '.join(known)})")


def topic_info(instance: str, name: str, settle_s: float = 0.5) -> dict:
    kind, obj = resolve(instance, name)
    if kind == "shm":
        row = next(r for r in _shm_rows(instance) if r.name == SHM_PREFIX + obj.name)
        d = row.as_dict()
        d["path"] = obj.path
        if obj.kind == "pool":
            from .shm_peek import PoolPeeker
            p = PoolPeeker(instance, obj.name)
            try:
                from shm.pool import STATE_NAMES
                st = p._slots["state"]
                d["slots"] = {n: int((st == code).sum()) for code, n in STATE_NAMES.items()}
            finally:
                p.close()
        return d
    from control.discovery import Discovery

    with _plane(instance, "topic") as plane:
        dsc = Discovery(plane)
        dsc.settle(settle_s)
        t = dsc.topic(obj.name)
        return {"name": t.name, "plane": "dds", "type": " | ".join(t.type_names),
                "qos": obj.profile.describe(), "doc": obj.doc,
                "fields": [f for f in obj.type.__annotations__],
                "publishers": [{"node": e.node, "reliable": e.reliable, "durability": e.durability}
                               for e in t.publishers],
                "subscribers": [{"node": e.node, "reliable": e.reliable, "durability": e.durability}
                                for e in t.subscribers]}


# --------------------------------------------------------------------------- echo
def echo(instance: str, name: str, *, count: int | None, timeout: float | None, emit) -> int:
    """Call emit(dict) per message; stop after `count` messages or `timeout` seconds.
    Returns the number of messages shown."""
    kind, obj = resolve(instance, name)
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = 0

    def more():
        return (count is None or shown < count) and (deadline is None or time.monotonic() < deadline)

    if kind == "dds":
        from control.messages import to_dict

        with _plane(instance, "echo") as plane:
            r = plane.reader(obj, observer=True)
            while more():
                left = 0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic()))
                for msg in r.take(timeout=left):
                    if not more():
                        break
                    emit({"topic": obj.name, **to_dict(msg)})
                    shown += 1
        return shown
    from .shm_peek import PoolPeeker, RingPeeker, summarize

    if obj.kind == "pool":
        p = PoolPeeker(instance, obj.name)
        try:
            while more():
                for snap in p.new_commits():
                    if not more():
                        break
                    emit({"channel": SHM_PREFIX + obj.name, "slot": snap.slot,
                          "generation": snap.generation, "writer_pid": snap.writer_pid,
                          "age_ms": round((time.monotonic_ns() - snap.commit_ns) / 1e6, 3),
                          "dtype": snap.dtype, "shape": list(snap.shape), "nbytes": snap.nbytes,
                          **summarize(snap.data)})
                    shown += 1
                time.sleep(0.005)
        finally:
            p.close()
        return shown
    rp = RingPeeker(instance, obj.name)
    try:
        while more():
            recs = rp.read()
            for rec in recs:
                if not more():
                    break
                emit({"channel": SHM_PREFIX + obj.name,
                      **{k: rec[k].tolist() for k in recs.dtype.names if not k.startswith("_")}})
                shown += 1
            if rp.lost:
                emit({"channel": SHM_PREFIX + obj.name, "lost": rp.lost})
                rp.lost = 0
            time.sleep(0.005)
    finally:
        rp.close()
    return shown


# --------------------------------------------------------------------------- hz / bw
def measure(instance: str, name: str, window_s: float) -> dict:
    """Rate (msgs/s) and bandwidth (bytes/s) over `window_s`, from producer-side counts."""
    kind, obj = resolve(instance, name)
    if kind == "dds":
        with _plane(instance, "hz") as plane:
            r = plane.reader(obj, observer=True)
            t0 = time.monotonic()
            stamps, nbytes = [], 0
            while (left := t0 + window_s - time.monotonic()) > 0:
                for msg in r.take(timeout=min(left, 0.1)):
                    stamps.append((msg.source, msg.t_mono_ns))
                    nbytes += len(msg.serialize())
        return _rate_dds(obj.name, stamps, nbytes, window_s)
    from .shm_peek import PoolPeeker, RingPeeker

    if obj.kind == "pool":
        p = PoolPeeker(instance, obj.name)
        try:
            w0, t0 = p.written, time.monotonic_ns()
            sizes, commits = [], []
            while time.monotonic_ns() - t0 < window_s * 1e9:
                for snap in p.new_commits(with_data=False):
                    sizes.append(snap.nbytes)
                    commits.append(snap.commit_ns)
                time.sleep(0.002)
            w1, t1 = p.written, time.monotonic_ns()
        finally:
            p.close()
        n = w1 - w0
        dt = (t1 - t0) / 1e9
        mean_size = sum(sizes) / len(sizes) if sizes else 0
        return {"name": SHM_PREFIX + obj.name, "window_s": round(dt, 3), "messages": n,
                "rate_hz": n / dt, "bytes_per_s": n * mean_size / dt,
                "mean_bytes": mean_size, "sizes_seen": len(sizes),
                "source": "producer counter `written`; sizes from slot headers"}
    rp = RingPeeker(instance, obj.name)
    try:
        w0, t0 = rp.written, time.monotonic_ns()
        time.sleep(window_s)
        w1, t1 = rp.written, time.monotonic_ns()
    finally:
        rp.close()
    n, dt = w1 - w0, (t1 - t0) / 1e9
    size = rp.record_dtype.itemsize
    return {"name": SHM_PREFIX + obj.name, "window_s": round(dt, 3), "messages": n,
            "rate_hz": n / dt, "bytes_per_s": n * size / dt, "mean_bytes": size,
            "source": "producer counter `head`"}


def _rate_dds(name: str, stamps: list[int], nbytes: int, window_s: float) -> dict:
    """`stamps`: (writer, t_mono_ns) pairs. The rate is messages over the window, as for shm
    channels and as `bw` counts bytes. For a periodic topic the gaps say more: ``gap_rate_hz``
    sums, over writers, one over each writer's mean gap (ROS 2's `topic hz`; several 1 Hz
    writers make an N Hz topic), which a burst of two messages would make look huge."""
    n = len(stamps)
    out = {"name": name, "window_s": window_s, "messages": n, "rate_hz": n / window_s,
           "bytes_per_s": nbytes / window_s, "mean_bytes": nbytes / n if n else 0,
           "writers": len({w for w, _ in stamps}),
           "source": "samples received; gaps from each writer's t_mono_ns"}
    by_writer: dict[str, list[int]] = {}
    for w, t in stamps:
        by_writer.setdefault(w, []).append(t)
    gap_rate, gaps = 0.0, []
    for ts in by_writer.values():
        ts.sort()
        span = (ts[-1] - ts[0]) / 1e9
        if len(ts) >= 2 and span > 0:
            gap_rate += (len(ts) - 1) / span
        gaps += [(b - a) / 1e9 for a, b in zip(ts, ts[1:])]
    if gaps:
        out.update(gap_rate_hz=gap_rate, min_gap_s=min(gaps), max_gap_s=max(gaps))
    return out
