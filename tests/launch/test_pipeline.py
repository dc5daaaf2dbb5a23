"""A launched four-stage pipeline (one per module, see conftest.py): pinning, a request end to
end, the node and topic tools through the real CLI, config, and supervision (kill -9, SIGSTOP).
The supervision test comes last: it restarts a stage under the others' feet."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from launch_testkit import REPO, STAGES, cli
from runtime.records import TOKEN_RECORD
from shm.inflight import read_board

IMAGE = (np.arange(56 * 84 * 3) % 251).astype(np.uint8).reshape(56, 84, 3)
AUDIO = np.sin(np.arange(1600) / 10).astype(np.float32)


@pytest.fixture(scope="module")
def client(pipeline):
    from control import topics as t
    from launch.driver import PipelineClient

    c = PipelineClient(pipeline.instance, node_name=f"test-driver-{os.getpid()}")
    c.r_state = c.plane.reader(t.STAGE_STATE)
    c.r_hb = c.plane.reader(t.HEARTBEAT, observer=True)
    assert c.wait_ready(len(STAGES), timeout=20), "stages never subscribed to requests"
    yield c
    c.close()


def _cpus_allowed(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(l.split(":", 1)[1].strip() for l in f if l.startswith("Cpus_allowed_list:"))


def test_stages_are_pinned_as_the_spec_says(pipeline):
    machine = sorted(os.sched_getaffinity(0))
    pids = pipeline.initial_pids
    assert set(pids) == set(STAGES)
    seen = {}
    for name, pid in pids.items():
        line = pipeline.wait_for_line(f"[launch] {name:<10} pid {pid}", 5)
        allowed = _cpus_allowed(pid)
        # The kernel's view matches the startup line's read-back, and is one core each.
        assert f"cores {allowed}" in line
        assert len(allowed.split(",")) == 1 and "-" not in allowed
        assert int(allowed) in machine
        seen[name] = int(allowed)
    if len(machine) < len(STAGES):
        assert "several stages share cores" in pipeline.lines[0]
        assert any("(shared with" in l for l in pipeline.lines)
    else:
        assert len(set(seen.values())) == len(STAGES)


def test_request_flows_end_to_end(client):
    rid = client.submit(image=IMAGE, audio=AUDIO, max_new_tokens=6)
    tokens = client.wait(rid, timeout=20)
    assert len(tokens) == 6
    # Every stage took the request and finished it; vision and audio announced embeddings.
    for stage in STAGES:
        assert client.wait_event(rid, stage, "done"), (stage, client.events[rid])
        done = next(e for e in client.events[rid] if e.source == stage and e.kind == "done")
        assert 0 < done.t_begin_ns <= done.t_mono_ns, stage   # when the stage took it
    ready = [e for e in client.events[rid] if e.kind == "modality_ready"]
    assert {e.modality for e in ready} == {"image", "audio"}
    img = next(e for e in ready if e.modality == "image")
    assert list(img.grid_thw) == [1, 56 // 14, 84 // 14] and img.n_tokens == 24
    # Tokens are a function of the embeddings: same input, same tokens; other input, others.
    assert client.wait(client.submit(image=IMAGE, audio=AUDIO, max_new_tokens=6), 20) == tokens
    other = client.wait(client.submit(image=255 - IMAGE, audio=AUDIO, max_new_tokens=6), 20)
    assert other != tokens
    # A request without media goes straight to decision and still ends at the gateway.
    rid = client.submit(max_new_tokens=3)
    assert len(client.wait(rid, timeout=20)) == 3
    assert not any(e.source == "vision" for e in client.events[rid])


def _main_thread_wakeups(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt"))


def test_idle_stages_sleep_instead_of_polling(pipeline, client):
    """An idle stage's main thread sleeps in its DDS wait until a message or a signal comes
    (it used to wake every 10 ms to notice signals: ~200 wake-ups in 2 s)."""
    client.wait(client.submit(max_new_tokens=2), timeout=20)
    time.sleep(0.5)
    idle = ("vision", "audio", "decision")   # the minimal gateway polls its ring (50 ms)
    before = {s: _main_thread_wakeups(pipeline.initial_pids[s]) for s in idle}
    time.sleep(2.0)
    woke = {s: _main_thread_wakeups(pipeline.initial_pids[s]) - before[s] for s in idle}
    assert all(n < 30 for n in woke.values()), woke


def test_every_file_of_the_instance_is_the_owners_alone(pipeline):
    from shm._paths import instance_dir

    root = instance_dir(pipeline.instance)
    assert os.stat(root).st_mode & 0o777 == 0o700
    modes = {f: os.stat(os.path.join(root, f)).st_mode & 0o777 for f in os.listdir(root)}
    assert "launch.json" in modes
    assert {f: m for f, m in modes.items() if m != 0o600} == {}


def test_node_list_and_info(pipeline, client):
    rows = json.loads(cli("node", "list", "--instance", pipeline.instance, "--json").stdout)
    by = {r["name"]: r for r in rows}
    assert set(by) == set(STAGES)
    for name, r in by.items():
        assert r["pid"] == pipeline.initial_pids[name]
        assert r["state"] in ("ready", "busy")
        assert r["cores"] == _cpus_allowed(r["pid"])
        assert 0 <= r["heartbeat_age_s"] < 2.5
        assert r["restarts"] == 0
        assert r["rss_bytes"] > 10 * 2**20 and r["cpu_percent"] >= 0
        assert "publishes" not in r        # topics are node info's (the list skips discovery)
    text = cli("node", "list", "--instance", pipeline.instance).stdout
    assert text.splitlines()[0].split() == ["NAME", "PID", "STATE", "CORES", "HB", "AGE",
                                            "RESTARTS", "CPU%", "RSS"]
    info = cli("node", "info", "vision", "--instance", pipeline.instance).stdout
    assert f"pid            {pipeline.initial_pids['vision']} (alive)" in info
    assert "autoglm/request" in info.split("subscribes")[1]
    assert "autoglm/heartbeat" in info.split("publishes")[1].split("subscribes")[0]
    # Its shm channels too, as the spec gives them.
    assert "shm/embeddings" in info.split("publishes")[1].split("subscribes")[0]
    assert "shm/frames" in info.split("subscribes")[1]
    r = cli("node", "info", "nosuch", "--instance", pipeline.instance, check=False)
    assert r.returncode == 1 and "no stage 'nosuch'" in r.stderr


def test_topic_list_and_info(pipeline, client):
    client.wait(client.submit(max_new_tokens=6), timeout=20)
    rows = json.loads(cli("topic", "list", "--instance", pipeline.instance, "--json").stdout)
    by = {r["name"]: r for r in rows}
    assert by["autoglm/request"]["type"] == "autoglm::control::Request"
    # Every request reaches the decision stage (and the minimal gateway); a perception stage
    # reads only the requests of its modality.
    assert set(by["autoglm/request"]["subscribers"]) == {"gateway", "decision"}
    assert set(by["autoglm/request/image"]["subscribers"]) == {"vision"}
    assert set(by["autoglm/request/audio"]["subscribers"]) == {"audio"}
    assert set(by["autoglm/heartbeat"]["publishers"]) == set(STAGES)
    assert by["shm/frames"]["type"] == "pool[4 x 65536 B]"
    assert "vision" in by["shm/frames"]["subscribers"] and "gateway" in by["shm/frames"]["publishers"]
    assert by["shm/tokens"]["type"] == f"ring[256 x {TOKEN_RECORD.itemsize} B]"
    # A ring's live writer and cursor are named by the stage whose process holds them.
    gw, dec = pipeline.initial_pids["gateway"], pipeline.initial_pids["decision"]
    assert f"gateway (pid {gw})" in by["shm/tokens"]["subscribers"]   # (a tool's may follow)
    assert f"pid {gw}" not in by["shm/tokens"]["subscribers"]
    assert by["shm/tokens"]["publishers"] == [f"decision (pid {dec})"]
    info = json.loads(cli("topic", "info", "shm/tokens", "--instance", pipeline.instance, "--json").stdout)
    assert info["kind"] == "ring" and info["written"] >= 6
    info = cli("topic", "info", "event", "--instance", pipeline.instance).stdout
    assert "qos: reliable, keep-all" in info and "publishers: " in info
    r = cli("topic", "info", "nope", "--instance", pipeline.instance, check=False)
    assert r.returncode == 1 and "no topic or channel 'nope'" in r.stderr and "shm/frames" in r.stderr


def _background(args):
    return subprocess.Popen([sys.executable, "-m", "launch.cli", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _feed_until_done(client, proc, timeout=40.0, **req):
    """Send requests (each must complete) until the background tool exits."""
    done = []
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        done.append(client.wait(client.submit(**req), timeout=20))
        time.sleep(0.2)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return out, done


def test_echo_of_a_shm_pool_shows_a_summary_and_consumes_nothing(pipeline, client):
    from shm.registry import Registry

    proc = _background(["topic", "echo", "shm/frames", "-n", "1", "--json", "--timeout", "40",
                        "--instance", pipeline.instance])
    out, done = _feed_until_done(client, proc, image=IMAGE)
    msg = json.loads(out.splitlines()[0])
    assert msg["shape"] == [56, 84, 3] and msg["dtype"] == "|u1" and msg["nbytes"] == IMAGE.nbytes
    assert msg["min"] == 0 and msg["max"] == 250 and abs(msg["mean"] - IMAGE.mean()) < 1e-9
    assert len(out) < 2000  # a summary, not the tensor
    assert done and all(len(t) == 6 for t in done)  # every request still completed
    time.sleep(0.3)
    assert Registry(pipeline.instance).channel("frames").in_use == 0  # nothing left held


def test_echo_of_the_token_ring_and_a_dds_topic(pipeline, client):
    proc = _background(["topic", "echo", "shm/tokens", "-n", "3", "--json", "--timeout", "40",
                        "--instance", pipeline.instance])
    out, done = _feed_until_done(client, proc, max_new_tokens=3)
    recs = [json.loads(l) for l in out.splitlines()]
    assert [r["index"] for r in recs] == [0, 1, 2] and recs[-1]["flags"] == 1
    assert recs[0]["token_id"] == done[0][0] or recs[0]["token_id"] in sum(done, [])
    proc = _background(["topic", "echo", "event", "-n", "2", "--json", "--timeout", "40",
                        "--instance", pipeline.instance])
    out, _ = _feed_until_done(client, proc, max_new_tokens=2)
    evs = [json.loads(l) for l in out.splitlines()]
    assert len(evs) == 2 and all(e["topic"] == "autoglm/event" and e["kind"] for e in evs)


def test_hz_and_bw_come_from_producer_counters(pipeline, client):
    stop = threading.Event()
    sent = []

    def feed():
        while not stop.is_set():
            client.wait(client.submit(image=IMAGE), timeout=20)
            sent.append(time.monotonic())
            time.sleep(0.1)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        hz = json.loads(cli("topic", "hz", "shm/frames", "--window", "2", "--json",
                            "--instance", pipeline.instance).stdout)
        bw = json.loads(cli("topic", "bw", "shm/embeddings", "--window", "2", "--json",
                            "--instance", pipeline.instance).stdout)
        hb = json.loads(cli("topic", "hz", "heartbeat", "--window", "2.5", "--json",
                            "--instance", pipeline.instance).stdout)
    finally:
        stop.set()
        t.join(30)
    assert hz["messages"] >= 1 and hz["rate_hz"] > 0 and "producer counter" in hz["source"]
    assert bw["messages"] >= 1 and bw["mean_bytes"] == 24 * 16 * 4  # [24 patches, 16] float32
    assert bw["bytes_per_s"] == pytest.approx(bw["rate_hz"] * bw["mean_bytes"])
    # Four stages beating at 1 Hz each.
    assert hb["writers"] == len(STAGES) and 3.0 < hb["rate_hz"] < 5.5


def test_config_change_reaches_a_running_stage(pipeline, client):
    before = client.wait(client.submit(image=IMAGE), timeout=20)
    cid = client.set_config("vision.scale", 3.0)
    deadline = time.monotonic() + 10
    applied = None
    while applied is None and time.monotonic() < deadline:
        for st in client.r_state.take(timeout=0.2):
            if st.stage == "vision" and st.request_id == cid:
                applied = st
    assert applied is not None and "vision.scale=3.0 applied" in applied.detail
    after = client.wait(client.submit(image=IMAGE), timeout=20)
    assert after != before  # the embeddings changed, so did the tokens
    client.set_config("vision.scale", 1.0)


def test_second_instance_side_by_side_with_a_flaky_stage(pipeline, client, tmp_path):
    """Instance B (gateway, decision and a stage whose first two starts crash) next to A: B
    restarts the flaky stage with backoff until it runs (2 failures stay under crash_n = 3),
    B serves its own requests, A sees none of it; killing B's launcher with SIGKILL takes B's
    stages down with it. (A stage that keeps crashing stops B: test_give_up.py.)"""
    from launch.driver import PipelineClient
    from launch_testkit import instance_processes, launch_pipeline, pid_alive

    counter = tmp_path / "flaky-starts"
    b = launch_pipeline(tmp_path, "tb", {
        "gateway": STAGES["gateway"], "decision": STAGES["decision"],
        "flaky": ("tests.launch.flaky_stage", "[]", "[]",
                  f'params = {{ counter = "{counter}", fail_times = 2 }}')}, crash_n=3)
    try:
        b.wait_ready()
        dead = [l for l in b.lines if l.startswith("[launch] flaky (pid")]
        # Doubling backoff: restart_backoff_s (0.2 s), then 0.4 s.
        assert [l.rsplit("restart in ", 1)[1] for l in dead] == ["0.2 s", "0.4 s"]
        assert counter.read_text() == "3"
        with PipelineClient(b.instance, node_name=f"test-b-{os.getpid()}") as cb:
            assert cb.wait_ready(2, 20)
            rid = cb.submit(max_new_tokens=4)
            assert len(cb.wait(rid, timeout=20)) == 4
        # A never saw B's request, and the node lists do not mix.
        client._collect(0.3)
        assert rid not in client.events
        rows_b = {r["name"]: r for r in json.loads(cli("node", "list", "--instance", b.instance, "--json").stdout)}
        rows_a = {r["name"]: r for r in json.loads(cli("node", "list", "--instance", pipeline.instance, "--json").stdout)}
        assert set(rows_a) == set(STAGES)
        assert set(rows_b) == {"gateway", "decision", "flaky"}
        assert rows_b["flaky"]["restarts"] == 2 and rows_b["flaky"]["state"] == "ready"
        assert not {r["pid"] for r in rows_a.values()} & {r["pid"] for r in rows_b.values()}
        assert all(r["state"] in ("ready", "busy") for r in rows_a.values())
        assert sum("restarting flaky" in l for l in b.lines) == 2
        b_pids = instance_processes(b.instance)
        assert len(b_pids) == 3
        b.stop(signal.SIGKILL)
        # PDEATHSIG (or the parent watchdog, within 0.5 s) sends SIGTERM; a stage whose
        # shutdown wedges is _exit()ed 5 s later. Allow that, plus a loaded machine's delays.
        deadline = time.monotonic() + 15
        while any(pid_alive(p) for p in b_pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(p) for p in b_pids), "stages outlived their launcher"
        # Nobody could clean up after a SIGKILLed launcher: the shm tool reclaims it.
        assert os.path.isdir(b.shm_dir)
        cli("shm", "clean", b.instance)
        assert not os.path.exists(b.shm_dir)
    finally:
        b.stop()
        for pid in instance_processes(b.instance):
            os.kill(pid, signal.SIGKILL)
        cli("shm", "clean", b.instance, check=False)  # a failed run leaves no segment behind


def _wait_state(client, stage, pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for st in client.r_state.take(timeout=0.05):
            if st.stage == stage and pred(st):
                return st, time.monotonic()
    raise AssertionError(f"no matching state of {stage} within {timeout} s")


def test_killed_stage_is_marked_dead_fails_its_requests_and_restarts(pipeline, client):
    from launch.driver import RequestFailed

    old = pipeline.initial_pids["vision"]
    cid = client.set_config("vision.delay_s", 30.0)   # held until killed
    _wait_state(client, "vision", lambda s: s.request_id == cid, 10)
    rid = client.submit(image=IMAGE)
    deadline = time.monotonic() + 10
    while rid not in read_board(pipeline.instance, "vision"):   # vision holds the request
        assert time.monotonic() < deadline, "vision never took the request"
        client._collect(0.05)
    held = json.loads(cli("node", "info", "vision", "--instance", pipeline.instance,
                          "--json").stdout)["holding"]
    assert held == [rid]
    assert f"holding        {rid}" in cli("node", "info", "vision", "--instance",
                                          pipeline.instance).stdout
    client.set_config("vision.delay_s", 0.0)  # what the restarted stage will read
    t_kill = time.monotonic()
    os.kill(old, signal.SIGKILL)
    st, t_dead = _wait_state(client, "vision", lambda s: s.state == "dead" and s.pid == old, 5)
    assert t_dead - t_kill < 3.0 and st.source == "launcher" and "SIGKILL" in st.detail
    with pytest.raises(RequestFailed, match="stage 'vision' died"):
        client.wait(rid, timeout=5)
    err = next(e for e in client.events[rid] if e.kind == "error")
    assert err.source == "launcher" and err.code == 503
    st, _ = _wait_state(client, "vision", lambda s: s.state == "ready" and s.pid != old, 60)
    assert st.restarts == 1
    pipeline.initial_pids["vision"] = st.pid
    pipeline.wait_for_line("[launch] vision (pid", 5)
    # The restarted stage serves again, with the new config.
    assert len(client.wait(client.submit(image=IMAGE), timeout=20)) == 6
    row = next(r for r in json.loads(cli("node", "list", "--instance", pipeline.instance,
                                          "--json").stdout) if r["name"] == "vision")
    assert row["pid"] == st.pid and row["restarts"] == 1 and row["state"] in ("ready", "busy")


def test_a_hung_stage_is_marked_dead_within_3s_of_its_last_heartbeat(pipeline, client):
    pid = pipeline.initial_pids["audio"]
    client.r_hb.take(0)
    last_hb = None
    while last_hb is None:  # stop it right after a beat, so we know when its last one was
        for hb in client.r_hb.take(timeout=1.5):
            if hb.stage == "audio" and hb.pid == pid:
                last_hb = time.monotonic()
    os.kill(pid, signal.SIGSTOP)  # alive, but silent
    st = None
    deadline = time.monotonic() + 8
    while st is None and time.monotonic() < deadline:
        for hb in client.r_hb.take(0):
            if hb.stage == "audio" and hb.pid == pid:
                last_hb = time.monotonic()
        for s in client.r_state.take(timeout=0.05):
            if s.stage == "audio" and s.state == "dead" and s.pid == pid:
                st = s
    t_dead = time.monotonic()
    assert st is not None and "no heartbeat" in st.detail
    # dead_after_s (3 s) after the last beat, plus the supervisor's 50 ms step and delivery.
    assert 2.8 < t_dead - last_hb < 3.5
    st, _ = _wait_state(client, "audio", lambda s: s.state == "ready" and s.pid != pid, 60)
    pipeline.initial_pids["audio"] = st.pid
    assert len(client.wait(client.submit(audio=AUDIO), timeout=20)) == 6


def test_param_cli_sets_a_value_that_outlives_the_cli_and_reaches_a_restarted_stage(pipeline, client):
    """`autoglm param set` waits for every stage to apply the value; the launcher keeps it,
    so a stage restarted after the CLI exited applies it too, once."""
    # A parameter every stage has (unknown names are refused: test_param.py).
    r = cli("param", "set", "trace.enabled", "true", "--instance", pipeline.instance, "--json")
    out = json.loads(r.stdout)
    assert out["value"] is True and sorted(out["applied"]) == sorted(STAGES) and out["missing"] == []
    listed = json.loads(cli("param", "list", "--instance", pipeline.instance, "--json").stdout)
    assert listed["trace.enabled"] is True
    old = pipeline.initial_pids["gateway"]
    os.kill(old, signal.SIGKILL)
    # One wait: the state topic keeps the last state per stage, and the new process's
    # "applied" state (published as ready) may replace its plain "ready" before we read it.
    st, _ = _wait_state(client, "gateway", lambda s: s.pid != old and s.pid > 0
                        and "config trace.enabled=true applied" in s.detail, 60)
    pipeline.initial_pids["gateway"] = st.pid


def test_param_cli_names_the_problem():
    r = cli("param", "set", "x", "1", "--instance", "no-such-pipeline-here", check=False, timeout=30)
    assert r.returncode != 0 and "no live stage in instance 'no-such-pipeline-here'" in r.stderr
    r = cli("param", "set", " ", "1", check=False)
    assert r.returncode != 0 and "NAME must not be empty" in r.stderr
