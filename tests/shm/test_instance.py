import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shm import (
    Instance, InstanceBusyError, InvalidNameError, PoolExhaustedError, Registry, SlotPool,
    StaleSlotError, instance_dir, list_instances,
)

from shm_testutil import EXIT_TIMEOUT_S, REPO, python_c, unique_name, wait_line

OWNER = """
import sys, time, signal, numpy as np
from shm import Instance
mode = sys.argv[2]
# Python's own SIGINT handler is installed only when the parent left SIGINT at SIG_DFL (pytest
# workers may not): make the precondition explicit.
signal.signal(signal.SIGINT, signal.default_int_handler)
if mode == "chained":
    def mine(signum, frame):
        print("previous handler ran", flush=True)
        sys.exit(3)
    signal.signal(signal.SIGTERM, mine)
inst = Instance.create(sys.argv[1])
inst.create_pool("p", 4096, 2)
ring = inst.create_ring("r", np.dtype([("x", "<i4")]), 8)
w = ring.writer()
ring.reader().read(timeout=0.01)  # a reader that blocked once: its wake-up FIFO exists
try:  # "up" inside the try: the test may signal as soon as it reads the line
    print("up", inst.path, flush=True)
    # Like a real main loop, block in short slices: Python runs handlers in the main thread,
    # and a process-directed signal may land on another thread (numpy's OpenBLAS workers do
    # not block signals), which does not interrupt a single long sleep of the main thread.
    for _ in range(600):
        time.sleep(0.1)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(4)
"""


@pytest.mark.parametrize("sig,mode,code,line", [
    (signal.SIGTERM, "default", -signal.SIGTERM, None),
    (signal.SIGTERM, "chained", 3, "previous handler ran"),
    (signal.SIGINT, "default", 4, "KeyboardInterrupt"),
])
def test_segments_removed_on_signal_and_handlers_chained(children, sig, mode, code, line):
    name = children.owns(unique_name())
    p = python_c(OWNER, name, mode)
    children.append(p)
    path = wait_line(p, "up").split(" ", 1)[1]
    assert sorted(os.listdir(path)) == ["instance.json", "p.pool", "r.ring", "r.wake-0"]
    p.send_signal(sig)
    assert p.wait(EXIT_TIMEOUT_S) == code
    if line:
        assert line in p.stdout.read()
    assert not os.path.exists(path)


def test_normal_exit_removes_segments(children):
    name = children.owns(unique_name())
    p = python_c("import sys; from shm import Instance; i = Instance.create(sys.argv[1]); i.create_pool('p', 64, 1); print('up', i.path)", name)
    children.append(p)
    path = wait_line(p, "up").split(" ", 1)[1]
    assert p.wait(EXIT_TIMEOUT_S) == 0
    assert not os.path.exists(path)


def test_crashed_instance_reclaimed_by_next_launch(children):
    name = children.owns(unique_name())
    p = python_c(OWNER, name, "default")
    children.append(p)
    path = wait_line(p, "up").split(" ", 1)[1]
    with pytest.raises(InstanceBusyError, match=f"live process {p.pid}"):
        Instance.create(name, handle_signals=False)
    p.send_signal(signal.SIGKILL)
    p.wait(EXIT_TIMEOUT_S)
    assert os.path.exists(os.path.join(path, "p.pool"))  # a crash leaves the segments...
    [info] = [i for i in list_instances() if i.name == name]
    assert not info.owner_alive and {c.name for c in info.channels} == {"p", "r"}
    with Instance.create(name, handle_signals=False) as inst:  # ...the next launch reclaims them
        assert inst.reclaimed_previous
        assert os.listdir(inst.path) == ["instance.json"]
    assert not os.path.exists(path)


def test_names_validated():
    for bad in ("", "a/b", "..", "x" * 65, "sp ace", "dot.ted"):
        with pytest.raises(InvalidNameError, match="invalid instance name"):
            Instance.create(bad, handle_signals=False)
    with pytest.raises(InvalidNameError, match="invalid channel name"):
        SlotPool.create("ok", "bad/name", 64, 1)


def test_registry_shows_live_counters(inst):
    pool = inst.create_pool("img", 4096, 3)
    ring = inst.create_ring("tok", np.dtype([("t", "<i4")]), 8)
    w = ring.writer(doorbell=False)
    rd = ring.reader()
    refs = [pool.put(np.zeros(8)) for _ in range(2)]
    pool.read(refs[0])
    pool.release(refs[0])
    w.write_many(np.zeros(3, dtype=[("t", "<i4")]))
    rd.read(timeout=0)
    chans = {c.name: c for c in Registry(inst.name).channels()}
    img, tok = chans["img"], chans["tok"]
    assert (img.kind, img.item_bytes, img.count, img.written, img.read, img.in_use) == ("pool", 4096, 3, 2, 1, 1)
    assert img.producer_pid == os.getpid() and img.producer_alive
    assert (tok.kind, tok.item_bytes, tok.count, tok.written, tok.read) == ("ring", 4, 8, 3, 3)
    assert tok.consumers[0]["pid"] == os.getpid() and tok.consumers[0]["lag"] == 0


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_cli_ls_and_clean(children):
    name = children.owns(unique_name())
    p = python_c(OWNER, name, "default")
    children.append(p)
    wait_line(p, "up")
    out = _cli("shm", "ls", name)
    assert out.returncode == 0, out.stderr
    assert f"owner pid {p.pid} alive" in out.stdout and "p " in out.stdout and "ring" in out.stdout
    data = json.loads(_cli("shm", "ls", name, "--json").stdout)
    assert data[0]["owner_alive"] and {c["name"] for c in data[0]["channels"]} == {"p", "r"}
    refused = _cli("shm", "clean", name)
    assert refused.returncode == 1 and "live process" in refused.stderr and "--force" in refused.stderr
    assert os.path.isdir(instance_dir(name))
    p.send_signal(signal.SIGKILL)
    p.wait(EXIT_TIMEOUT_S)
    assert "DEAD" in _cli("shm", "ls", name).stdout
    done = _cli("shm", "clean", name)
    assert done.returncode == 0 and f"removed {name}" in done.stdout
    assert not os.path.exists(instance_dir(name))
    assert _cli("shm", "clean").returncode == 1  # neither INSTANCE nor --all


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "read", "release", "stale"]), st.integers(0, 7), st.integers(1, 3)),
                max_size=40))
def test_pool_invariants(ops):
    """Model check: a slot is free iff all shares of its last commit were released; reads
    return what was written; refs of reused slots are always rejected."""
    with Instance.create(unique_name(), handle_signals=False) as inst:
        pool = inst.create_pool("p", 64, 3)
        live: list[tuple] = []  # (ref, shares left, value)
        dead = []
        counter = 0
        for op, k, readers in ops:
            if op == "put":
                if len(live) == 3:
                    with pytest.raises(PoolExhaustedError):
                        pool.acquire(timeout=0)
                    continue
                counter += 1
                ref = pool.put(np.full(4, counter), readers=readers, timeout=0)
                assert all(ref.slot != r.slot for r, _, _ in live)
                live.append([ref, readers, counter])
            elif op in ("read", "release") and live:
                entry = live[k % len(live)]
                ref, left, val = entry
                if op == "read":
                    with pool.view(ref) as a:
                        assert (a == val).all()
                else:
                    pool.release(ref)
                entry[1] -= 1
                if entry[1] == 0:
                    live.remove(entry)
                    dead.append(ref)
            elif op == "stale" and dead:
                ref = dead[k % len(dead)]
                with pytest.raises(StaleSlotError):
                    pool.read(ref)
            assert pool.free_slots() == 3 - len(live)
        pool.close()
    assert not os.path.exists(inst.path)
