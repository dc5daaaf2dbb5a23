"""Peer processes for the control-plane tests: each creates its own participant in the child.

Used two ways: as a multiprocessing (spawn) target, and by an independent interpreter
(`python -c "import control_peers; control_peers.main()" ROLE ...`), so the tests cover
both a child of the test process and a process that shares nothing with it.
"""
from __future__ import annotations

import select
import sys
import time

from control import messages as m
from control import topics as t
from control.plane import ControlPlane


def exchange(instance: str, n: int, results) -> None:
    """Spawn target: write ``n`` requests to the parent, read ``n`` cancels back."""
    try:
        with ControlPlane(instance, "peer-exchange") as plane:
            cancels = plane.reader(t.CANCEL)
            requests = plane.writer(t.REQUEST)
            if not requests.wait_for_readers(1, timeout=20):
                raise RuntimeError("parent's request reader never matched")
            for i in range(n):
                requests.write(m.Request(request_id=f"req-{i}", n_prompt_tokens=i,
                                         prompt=m.ShmRef("tokens", i % 7, i, 4 * i)))
            got = []
            deadline = time.monotonic() + 30
            while len(got) < n and time.monotonic() < deadline:
                got += [c.request_id for c in cancels.take(timeout=1.0)]
            results.put(("ok", got))
    except BaseException as exc:  # report, don't hang the parent
        results.put(("error", repr(exc)))


def status_peer(instance: str) -> None:
    """Independent process: two config writes, state 'ready', heartbeats every 0.2 s.

    Prints 'ready <pid>' once everything is published, then serves (transient-local data
    lives in this writer) until stdin closes.
    """
    import os

    with ControlPlane(instance, "peer-status") as plane:
        config = plane.writer(t.CONFIG)
        config.write(m.ConfigValue(name="max_batch", value_json="8"))
        config.write(m.ConfigValue(name="max_batch", value_json="16"))
        config.write(m.ConfigValue(name="log_level", value_json='"info"'))
        plane.writer(t.STAGE_STATE).write(m.StageState(
            stage="vision", state=m.StageStates.READY, pid=os.getpid(), cores=[2, 3]))
        beats = plane.writer(t.HEARTBEAT)
        print(f"ready {os.getpid()}", flush=True)
        seq = 0
        while not select.select([sys.stdin], [], [], 0.2)[0]:  # until the test closes stdin
            seq += 1
            beats.write(m.Heartbeat(stage="vision", seq=seq, pid=os.getpid(),
                                    state=m.StageStates.READY))


def flood_peer(instance: str, domain_id: int, seconds: float) -> None:
    """Independent process: writes a request every 20 ms on a forced domain id."""
    with ControlPlane(instance, "peer-flood", domain_id=domain_id) as plane:
        w = plane.writer(t.REQUEST)
        print("ready", flush=True)
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            w.write(m.Request(request_id=f"{instance}-{i}"))
            i += 1
            time.sleep(0.02)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    role, args = argv[0], argv[1:]
    if role == "status":
        status_peer(args[0])
    elif role == "flood":
        flood_peer(args[0], int(args[1]), float(args[2]))
    else:
        raise SystemExit(f"unknown role {role!r}")
