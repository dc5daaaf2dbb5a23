import asyncio
import os
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shm import PayloadError, Ring, RingBusyError, Registry

from shm_testutil import EXIT_TIMEOUT_S, python_c, wait_line

TOKEN = np.dtype([("req", "<u4"), ("tok", "<i4"), ("check", "<u8"), ("pad", "<u8", 5)])


def test_slow_consumer_told_how_many_it_lost(inst):
    ring = inst.create_ring("tok", TOKEN, 16)
    w = ring.writer(doorbell=False)
    fast, slow = ring.reader(), ring.reader()
    for i in range(10):
        w.write((1, i, i * 7, [i] * 5))
    assert fast.read(timeout=0).records["tok"].tolist() == list(range(10))
    for i in range(10, 100):
        w.write((1, i, i * 7, [i] * 5))
    b = slow.read(timeout=0)
    assert b.lost == 100 - 16
    assert b.records["tok"].tolist() == list(range(84, 100))  # the newest, in order
    assert slow.lost == 84 and fast.read(timeout=0).lost == 100 - 10 - 16
    info = Registry(inst.name).channel("tok")
    assert info.written == 100 and info.dropped == 84 + 74 and info.read == 10 + 16 + 16


def test_a_sampling_reader_takes_the_newest_and_loses_nothing(inst):
    """The gateway reads the engine's load only when /metrics is scraped: what it skips is
    no loss (shm ls showed thousands dropped)."""
    ring = inst.create_ring("stats", TOKEN, 8)
    w = ring.writer(doorbell=False)
    r = ring.reader(start="latest")
    assert len(r.read_latest().records) == 0
    for i in range(30):
        w.write((1, i, 0, [0] * 5))
    b = r.read_latest()
    assert b.records["tok"].tolist() == [29] and b.lost == 0
    assert len(r.read_latest().records) == 0   # nothing new since
    w.write((1, 30, 0, [0] * 5))
    assert r.read_latest().records["tok"].tolist() == [30]
    info = Registry(inst.name).channel("stats")
    assert info.dropped == 0 and info.written == 31


HAMMER = """
import struct, sys, numpy as np
from shm import Ring
ring = Ring.attach(sys.argv[1], "tok")
w = ring.writer(doorbell=True)
print("go", flush=True)
n, batch = int(sys.argv[2]), int(sys.argv[3])
i = 0
while i < n:
    # every field derives from i: a torn record would show a mismatch
    if batch == 1:
        w.write((i % 2**32, i % 2**31, i * 7, [i] * 5))
        i += 1
    elif batch == 0:  # write_packed: the leading fields packed, the rest zeros
        w.write_packed(struct.Struct("<IiQ"), (i % 2**32, i % 2**31, i * 7))
        i += 1
    else:  # write_many in batches of 1..batch (single, contiguous and wrapping writes)
        k = min(n - i, 1 + i % batch)
        recs = np.zeros(k, dtype=ring.record_dtype)
        v = np.arange(i, i + k)
        recs["req"], recs["tok"], recs["check"] = v, v, v * 7
        recs["pad"] = v[:, None]
        w.write_many(recs)
        i += k
print("done", flush=True)
"""


@pytest.mark.parametrize("batch", [1, 5, 0])
def test_concurrent_writer_never_gives_torn_records(inst, children, batch):
    n = 30000
    ring = inst.create_ring("tok", TOKEN, 64)
    r = ring.reader(start="oldest")
    p = python_c(HAMMER, inst.name, str(n), str(batch))
    children.append(p)
    wait_line(p, "go")
    got = lost = 0
    last = -1
    deadline = time.monotonic() + 60
    while got + lost < n and time.monotonic() < deadline:
        b = r.read(max_n=50, timeout=1)
        lost += b.lost
        rec = b.records
        ck = rec["check"].astype(np.int64)
        assert (rec["tok"].astype(np.int64) == ck // 7).all()
        assert (rec["pad"] == (ck[:, None] // 7 if batch else 0)).all()
        seq = ck // 7
        if len(seq):
            assert seq[0] > last and (np.diff(seq) == 1).all()  # in order, contiguous in a batch
            last = int(seq[-1])
        got += len(rec)
        time.sleep(0.0005 if got % 3 else 0)  # be slow sometimes: force overruns
    assert p.wait(EXIT_TIMEOUT_S) == 0
    assert got + lost == n and got > 0
    assert r.lost == lost


def test_packed_record_zeroes_the_rest_and_must_fit(inst):
    ring = inst.create_ring("tok", TOKEN, 2)
    w, r = ring.writer(doorbell=False), ring.reader(start="oldest")
    w.write((1, 2, 3, [9] * 5))
    w.write((1, 2, 3, [9] * 5))
    assert w.write_packed(struct.Struct("<Ii"), (4, -5)) == 2   # lands on record 0's entry
    rec = r.read(timeout=0).records[-1]
    assert (int(rec["req"]), int(rec["tok"]), int(rec["check"])) == (4, -5, 0)
    assert rec["pad"].tolist() == [0] * 5
    with pytest.raises(PayloadError, match="exceed its 56-byte records"):
        w.write_packed(struct.Struct("<57s"), (b"",))


def test_single_live_writer(inst, children):
    inst.create_ring("tok", TOKEN, 8)
    code = """
import sys, time
from shm import Ring
w = Ring.attach(sys.argv[1], "tok").writer(doorbell=False)
w.write((1, 2, 3, [0]*5))
print("writer", flush=True)
time.sleep(60)
"""
    p = python_c(code, inst.name)
    children.append(p)
    wait_line(p, "writer")
    ring = Ring.attach(inst.name, "tok")
    with pytest.raises(RingBusyError, match=f"live writer \\(pid {p.pid}\\)"):
        ring.writer()
    p.kill()
    p.wait(EXIT_TIMEOUT_S)
    w = ring.writer(doorbell=False)  # a restarted producer takes over and continues the sequence
    assert w.write((1, 5, 0, [0] * 5)) == 1


def test_bad_records_rejected(inst):
    ring = inst.create_ring("tok", np.dtype([("a", "<i4")]), 8)
    with pytest.raises(PayloadError, match="takes records of dtype"):
        ring.writer(doorbell=False).write_many(np.zeros(2, dtype=[("b", "<f8"), ("c", "<f8")]))
    with pytest.raises(PayloadError, match="Python objects"):
        inst.create_ring("o", np.dtype(object), 8)


WAKER = """
import sys, time, numpy as np
from shm import Ring
w = Ring.attach(sys.argv[1], "tok").writer()
print("bound", flush=True)
sys.stdin.readline()
time.sleep(0.2)
w.write((1, 7, time.monotonic_ns(), [0]*5))
time.sleep(2)
"""


def test_blocking_read_sleeps_until_doorbell(inst, children):
    ring = inst.create_ring("tok", TOKEN, 8)
    r = ring.reader()
    assert len(r.read(timeout=0).records) == 0
    t0 = time.monotonic()
    assert len(r.read(timeout=0.15).records) == 0  # times out, empty
    assert 0.14 <= time.monotonic() - t0 < 1.0
    import subprocess

    p = python_c(WAKER, inst.name, stdin=subprocess.PIPE)
    children.append(p)
    wait_line(p, "bound")
    r.read(timeout=0.3)  # connects the doorbell; nothing there yet
    import resource

    cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    p.stdin.write("go\n")
    p.stdin.flush()
    b = r.read(timeout=10)
    t_recv = time.monotonic_ns()
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0
    assert b.records["tok"].tolist() == [7]
    assert t_recv - int(b.records["check"][0]) < 50e6  # woken promptly, not at a poll tick
    assert cpu < 0.1  # slept ~0.2 s without spinning


def test_asyncio_reader(inst):
    ring = inst.create_ring("tok", TOKEN, 8)
    w = ring.writer()
    r = ring.reader()

    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: w.write((3, 4, 0, [0] * 5)))
        first = await r.aread(timeout=5)
        empty = await r.aread(timeout=0.05)
        return first, empty

    first, empty = asyncio.run(main())
    assert first.records["tok"].tolist() == [4] and len(empty.records) == 0
    r.close()
    w.close()


def test_watching_reader_gets_every_record_from_the_loop(inst, children):
    """watch(): records come to the callback from the event loop's selector, in order, for
    single and batched writes of another process; unwatch() stops the deliveries."""
    ring = inst.create_ring("tok", TOKEN, 1024)  # holds all 500: a slow loop loses none
    r = ring.reader()
    got, losses = [], []

    async def main():
        loop = asyncio.get_running_loop()
        r.watch(loop, lambda b: (got.extend(b.records["tok"].tolist()), losses.append(b.lost)))
        p = python_c(HAMMER, inst.name, "500", "5")
        children.append(p)
        deadline = time.monotonic() + 30
        while len(got) + sum(losses) < 500 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        r.unwatch()
        assert p.wait(EXIT_TIMEOUT_S) == 0

    asyncio.run(main())
    assert sum(losses) == 0 and got == list(range(500))
    w = ring.writer()
    w.write((1, 999, 0, [0] * 5))
    time.sleep(0.05)
    assert got[-1] == 498 + 1  # nothing more after unwatch(); the record waits for a read
    assert r.read(timeout=0).records["tok"].tolist() == [999]
    r.close()
    w.close()


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 12),
    ops=st.lists(st.one_of(st.integers(0, 30), st.tuples(st.just("read"), st.integers(1, 20))), max_size=30),
)
def test_ring_invariants(capacity, ops):
    """Model check: a reader gets exactly the records still in the ring, oldest first, and
    `lost` accounts for every other one."""
    from shm import Instance
    from shm_testutil import unique_name

    with Instance.create(unique_name(), handle_signals=False) as inst:
        ring = inst.create_ring("r", np.dtype([("v", "<i8")]), capacity)
        w = ring.writer(doorbell=False)
        r = ring.reader(start="oldest")
        written = 0
        delivered: list[int] = []
        lost = 0
        cursor = 0  # model cursor
        for op in ops:
            if isinstance(op, int):
                if op:
                    w.write_many(np.array([(v,) for v in range(written, written + op)], dtype=[("v", "<i8")]))
                written += op
            else:
                max_n = op[1]
                b = r.read(max_n=max_n, timeout=0)
                expect_lost = max(0, written - cursor - capacity)
                cursor += expect_lost
                take = min(max_n, written - cursor)
                assert b.lost == expect_lost
                assert b.records["v"].tolist() == list(range(cursor, cursor + take))
                cursor += take
                delivered += b.records["v"].tolist()
                lost += b.lost
        assert r.lost == lost
        assert len(delivered) + lost == cursor <= written
        assert delivered == sorted(delivered) and len(set(delivered)) == len(delivered)
        r.close()
        ring.close()
    assert not os.path.exists(inst.path)
