"""Real processes, real DDS: ordering, reliability, transient-local, heartbeats, isolation.

Each test uses its own instance name, so they can run in parallel (pytest-xdist) and
next to a running pipeline.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import control_peers
from control import messages as m
from control import topics as t
from control.discovery import Discovery
from control.naming import domain_id_for
from control.plane import ControlPlane

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def unique_instance(tag: str) -> str:
    return f"test-{tag}-{uuid.uuid4().hex[:10]}"


def start_peer(*args: str, env_extra: dict | None = None) -> subprocess.Popen:
    """An independent interpreter (`python -c`) running control_peers.main(args)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE)])
    env.update(env_extra or {})
    return subprocess.Popen(
        [sys.executable, "-c", "import control_peers; control_peers.main()", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=str(REPO))


def wait_ready(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise AssertionError(f"peer did not start: {line!r} {proc.stderr.read()}")
    return line


def stop_peer(proc: subprocess.Popen) -> None:
    if proc.stdin and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_spawned_child_exchanges_500_messages_each_way_in_order():
    instance = unique_instance("order")
    n = 500
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with ControlPlane(instance, "parent") as plane:
        requests = plane.reader(t.REQUEST)
        cancels = plane.writer(t.CANCEL)
        child = ctx.Process(target=control_peers.exchange, args=(instance, n, results))
        child.start()
        try:
            got = []
            deadline = time.monotonic() + 30
            while len(got) < n and time.monotonic() < deadline:
                got += requests.take(timeout=1.0)
            assert [r.request_id for r in got] == [f"req-{i}" for i in range(n)]
            assert [r.prompt.slot for r in got] == [i % 7 for i in range(n)]
            assert [r.prompt.generation for r in got] == list(range(n))
            assert all(r.source == "peer-exchange" for r in got)
            # Stamped by the writer on CLOCK_MONOTONIC, which this process shares.
            now = time.monotonic_ns()
            assert all(0 < now - r.t_mono_ns < 60e9 for r in got)
            assert all(a.t_mono_ns <= b.t_mono_ns for a, b in zip(got, got[1:]))

            assert cancels.wait_for_readers(1, timeout=20)
            for i in range(n):
                cancels.write(m.Cancel(request_id=f"c-{i}", reason="test"))
            status, back = results.get(timeout=40)
            assert status == "ok", back
            assert back == [f"c-{i}" for i in range(n)]
        finally:
            child.join(timeout=20)
            if child.is_alive():
                child.kill()
    assert child.exitcode == 0


def test_independent_process_late_joiner_heartbeats_discovery_and_garbage_uri(monkeypatch):
    """One `python -c` peer serves four checks (DDS discovery is the slow part):
    transient-local config and state reach a late reader, heartbeats come at ~1 Hz,
    discovery lists the peer's topics, and a garbage CYCLONEDDS_URI in either process
    changes nothing."""
    instance = unique_instance("status")
    garbage = "<CycloneDDS><Domain><General><Interfaces><NetworkInterface name='nope0'/>"
    monkeypatch.setenv("CYCLONEDDS_URI", garbage)
    peer = start_peer("status", instance, env_extra={"CYCLONEDDS_URI": "file:///no/such.xml"})
    try:
        peer_pid = int(wait_ready(peer).split()[1])
        # Joined after every config write and the state change: transient-local history.
        with ControlPlane(instance, "late-joiner") as plane:
            config = plane.reader(t.CONFIG)
            states = plane.reader(t.STAGE_STATE)
            beats = plane.reader(t.HEARTBEAT)
            discovery = Discovery(plane)
            assert config.wait_for_writers(1, timeout=10)
            assert config.wait_for_historical_data(5)
            values = {}
            deadline = time.monotonic() + 5
            while len(values) < 2 and time.monotonic() < deadline:
                values.update({c.name: c.value_json for c in config.take(timeout=1.0)})
            assert values == {"max_batch": "16", "log_level": '"info"'}

            assert states.wait_for_historical_data(5)
            current = {s.stage: s for s in states.take(timeout=2.0)}
            assert current["vision"].state == m.StageStates.READY
            assert current["vision"].pid == peer_pid
            assert list(current["vision"].cores) == [2, 3]

            got = []
            deadline = time.monotonic() + 10
            while len(got) < 3 and time.monotonic() < deadline:
                got += beats.take(timeout=1.0)
            assert len(got) >= 3, got
            assert all(b.stage == "vision" and b.pid == peer_pid for b in got)
            assert all(b.state == m.StageStates.READY for b in got)
            seqs = [b.seq for b in got]  # best effort, but nothing is lost on loopback
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            assert all(a.t_mono_ns < b.t_mono_ns for a, b in zip(got, got[1:]))

            discovery.settle(0.5)
            nodes = [(n.node, n.pid) for n in discovery.nodes()]
            assert ("peer-status", peer_pid) in nodes
            by_name = {ti.name: ti for ti in discovery.topics()}
            hb = by_name["autoglm/heartbeat"]
            assert [e.node for e in hb.publishers] == ["peer-status"]
            assert [e.node for e in hb.subscribers] == ["late-joiner"]
            assert hb.type_names == ["autoglm::control::Heartbeat"]
            assert by_name["autoglm/config"].publisher_count == 1
            # Discovery reports each endpoint's QoS as the table set it.
            assert [(e.reliable, e.durability) for e in hb.publishers] == [(False, "Volatile")]
            config_pub, = by_name["autoglm/config"].publishers
            assert (config_pub.reliable, config_pub.durability) == (True, "TransientLocal")
            assert by_name["autoglm/lifecycle/state"].publisher_count == 1
            assert by_name["autoglm/request"].publisher_count == 0
            assert by_name["autoglm/request"].known
    finally:
        stop_peer(peer)
    assert peer.returncode == 0, peer.stderr.read()


def test_two_instances_on_one_domain_do_not_see_each_other():
    """Forced onto the same domain id (what a hash collision gives), two instances stay
    apart thanks to the partition; a reader of the flooding instance proves traffic flowed."""
    inst_a, inst_b = unique_instance("iso-a"), unique_instance("iso-b")
    domain = domain_id_for(inst_a)
    peer = start_peer("flood", inst_b, str(domain), "2.5")
    try:
        wait_ready(peer)
        with ControlPlane(inst_a, "a-reader", domain_id=domain) as plane_a, \
                ControlPlane(inst_b, "b-reader", domain_id=domain) as plane_b:
            reader_a = plane_a.reader(t.REQUEST)
            observer_a = plane_a.reader(t.REQUEST, observer=True)
            reader_b = plane_b.reader(t.REQUEST)
            discovery_a = Discovery(plane_a)
            got_a, got_b = [], []
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                got_a += reader_a.take(timeout=0.05) + observer_a.take()
                got_b += reader_b.take()
            assert len(got_b) > 20 and all(r.request_id.startswith(inst_b) for r in got_b)
            assert got_a == []
            assert reader_a.matched_writers == 0
            assert reader_b.matched_writers == 1
            assert {ti.name: ti.publisher_count for ti in discovery_a.topics()}[
                "autoglm/request"] == 0
            assert "peer-flood" not in [n.node for n in discovery_a.nodes()]
    finally:
        stop_peer(peer)
    assert peer.returncode == 0, peer.stderr.read()
