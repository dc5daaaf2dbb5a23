import os
import signal

import numpy as np
import pytest
import torch

from shm import (
    BF16, PayloadError, PoolExhaustedError, SlotPool, SlotRef, StaleSlotError,
)

from shm_testutil import EXIT_TIMEOUT_S, python_c, wait_line


def test_roundtrip_numpy_zero_copy(inst):
    pool = inst.create_pool("img", 4096, 2)
    src = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    ref = pool.put(src)
    other = SlotPool.attach(inst.name, "img")
    a = other.read(ref)
    b = other.read(ref)
    assert a.shape == (3, 4, 5) and a.dtype == np.float32
    np.testing.assert_array_equal(a, src)
    # Both reads point at the same shared memory: no copy was made.
    assert a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0, 0] = 1
    other.release(ref)
    other.release(ref)
    assert pool.free_slots() == 2
    # Data written in place by the producer is what the reader sees (view over slot memory).
    loan = pool.acquire()
    arr = loan.array((4,), np.int64)
    arr[:] = [1, 2, 3, 4]
    ref2 = loan.commit()
    view = other.read(ref2)
    assert view.tolist() == [1, 2, 3, 4]
    arr[0] = 42  # same memory
    assert view[0] == 42
    other.release(ref2)


def test_torch_roundtrip_including_bf16(inst):
    pool = inst.create_pool("emb", 1 << 16, 2)
    t = torch.randn(7, 33, dtype=torch.bfloat16)
    ref = pool.put(t)
    got = pool.read_torch(ref)
    assert got.dtype == torch.bfloat16 and got.shape == (7, 33)
    assert torch.equal(got, t)
    assert got.data_ptr() == pool.read_torch(ref).data_ptr()  # zero copy
    raw = pool.read(ref)  # numpy has no bf16: raw bits
    assert raw.dtype == np.uint16 and np.array_equal(raw, t.view(torch.int16).numpy().view(np.uint16))
    for _ in range(3):
        pool.release(ref)
    f = torch.arange(12, dtype=torch.float16).reshape(3, 4).t()  # non-contiguous source
    ref = pool.put(f)
    assert torch.equal(pool.read_torch(ref), f)
    pool.release(ref)


def test_read_torch_follows_each_payload_of_a_reused_slot(inst):
    # The view over a slot is kept for the next read of the same dtype and shape: it must
    # still show what the producer wrote last, and a new dtype or shape gets a view of its own.
    pool = inst.create_pool("emb", 1 << 16, 1)
    consumer = SlotPool.attach(inst.name, "emb")
    for payload in (torch.randn(7, 33, dtype=torch.bfloat16), torch.randn(7, 33, dtype=torch.bfloat16),
                    torch.randn(5, 33, dtype=torch.bfloat16), torch.arange(12, dtype=torch.int32),
                    torch.randn(7, 33, dtype=torch.bfloat16)):
        ref = pool.put(payload)
        got = consumer.read_torch(ref)
        assert got.dtype == payload.dtype and got.shape == payload.shape
        assert torch.equal(got, payload)
        consumer.release(ref)
        with pytest.raises(StaleSlotError):
            consumer.read_torch(ref)      # given back: the kept view does not bypass the check
    assert pool.free_slots() == 1


def test_data_region_is_the_payload_bytes_of_the_mapping(inst):
    import ctypes

    pool = inst.create_pool("emb", 5000, 3)
    address, length = pool.data_region()
    assert length == 3 * 8192                      # slots start on 4 KiB boundaries
    assert address % 4096 == 0
    ref = pool.put(np.arange(10, dtype=np.int64))
    stride = length // 3
    assert list((ctypes.c_int64 * 10).from_address(address + ref.slot * stride)) == list(range(10))
    pool.release(ref)
    pool.close()                                   # no buffer export left behind


def test_slotref_is_picklable_and_msgpackable():
    import pickle

    import msgpack

    ref = SlotRef("img", 3, 17)
    assert pickle.loads(pickle.dumps(ref)) == ref
    assert SlotRef.unpack(ref.pack()) == ref
    assert SlotRef(*msgpack.unpackb(msgpack.packb(ref))) == ref


def test_generation_mismatch_detected(inst):
    pool = inst.create_pool("p", 1024, 1)
    old = pool.put(np.zeros(4))
    pool.release(old)
    new = pool.put(np.ones(4))  # same slot, next generation
    assert new.slot == old.slot and new.generation == old.generation + 1
    with pytest.raises(StaleSlotError, match="reused: ref generation"):
        pool.read(old)
    with pytest.raises(StaleSlotError):
        pool.release(old)
    np.testing.assert_array_equal(pool.read(new), np.ones(4))
    pool.release(new)
    with pytest.raises(StaleSlotError, match="not ready"):
        pool.release(new)  # double release


def test_bad_payloads_rejected_clearly(inst):
    pool = inst.create_pool("p", 1024, 2, dtype=np.float32)
    with pytest.raises(PayloadError, match=r"2048 bytes.*does not fit a slot of channel 'p' \(1024 bytes\)"):
        pool.put(np.zeros(512, np.float32))
    with pytest.raises(PayloadError, match="carries dtype <f4, got <f8"):
        pool.put(np.zeros(4, np.float64))
    with pytest.raises(PayloadError, match="unsupported dtype"):
        inst.create_pool("o", 1024, 1).put(np.array([object()]))
    assert pool.free_slots() == 2  # failed writes gave their slot back
    ref = pool.put(np.zeros((2, 3), np.float32))
    with pytest.raises(PayloadError, match=r"holds shape \(2, 3\), expected \(3, 2\)"):
        pool.read(ref, shape=(3, 2))
    with pytest.raises(PayloadError, match="holds dtype <f4, expected <i4"):
        pool.read(ref, dtype=np.int32)
    assert pool.read(ref, dtype=np.float32, shape=(2, 3)).shape == (2, 3)
    pool.release(ref)
    assert pool.free_slots() == 2  # the rejected reads did not keep holds
    bf = inst.create_pool("bf", 1024, 1, dtype=BF16)
    with pytest.raises(PayloadError, match="carries dtype bf16"):
        bf.put(torch.zeros(3, dtype=torch.float32))


def test_exhausted_pool_times_out(inst):
    pool = inst.create_pool("p", 64, 1)
    ref = pool.put(np.zeros(2))
    with pytest.raises(PoolExhaustedError, match="no free slot in channel 'p'"):
        pool.acquire(timeout=0.05)
    pool.release(ref)
    pool.acquire(timeout=0.05).abort()


def test_mode_0600(inst):
    pool = inst.create_pool("p", 64, 1)
    ring = inst.create_ring("r", np.dtype([("x", "<i4")]), 4)
    w = ring.writer()
    r = ring.reader()
    r.read(timeout=0.01)  # blocks once: creates its wake-up FIFO
    assert os.stat(inst.path).st_mode & 0o777 == 0o700
    for path in (pool.path, ring.path, os.path.join(inst.path, "r.wake-0"), os.path.join(inst.path, "instance.json")):
        assert os.stat(path).st_mode & 0o777 == 0o600, path
    r.close()
    assert not os.path.exists(os.path.join(inst.path, "r.wake-0"))  # a closed reader takes it away
    w.close()


PRODUCER = """
import sys, numpy as np
from shm import SlotPool, Ring
inst, n = sys.argv[1], int(sys.argv[2])
pool = SlotPool.attach(inst, "frames")
refs = Ring.attach(inst, "refs")
w = refs.writer()
for i in range(n):
    ref = pool.put(np.full((64, 3), i, dtype=np.int32), readers=2, timeout=20)
    w.write((ref.slot, ref.generation))
print("done", flush=True)
"""

CONSUMER = """
import sys, numpy as np
from shm import SlotPool, SlotRef, Ring
inst, n = sys.argv[1], int(sys.argv[2])
pool = SlotPool.attach(inst, "frames")
r = Ring.attach(inst, "refs").reader(start="oldest")
print("ready", flush=True)
got = 0
while got < n:
    batch = r.read(timeout=20)
    assert batch.lost == 0, batch.lost
    for rec in batch.records:
        ref = SlotRef("frames", int(rec["slot"]), int(rec["gen"]))
        with pool.view(ref) as a:
            assert a.shape == (64, 3) and (a == got).all(), (got, a[0])
        got += 1
print("ok", got, flush=True)
"""


def test_producer_and_two_consumers_in_separate_processes(inst, children):
    n = 40
    inst.create_pool("frames", 64 * 3 * 4, 4)
    inst.create_ring("refs", np.dtype([("slot", "<u4"), ("gen", "<u8")]), 256)
    cons = [python_c(CONSUMER, inst.name, str(n)) for _ in range(2)]
    children.extend(cons)
    for c in cons:
        wait_line(c, "ready")
    prod = python_c(PRODUCER, inst.name, str(n))
    children.append(prod)
    assert prod.wait(60) == 0, prod.stderr.read()
    for c in cons:
        assert c.wait(60) == 0, c.stderr.read()
        assert f"ok {n}" in c.stdout.read()
    pool = SlotPool.attach(inst.name, "frames")
    assert pool.free_slots() == 4  # every slot came back after 2 releases each
    assert pool.stats()["written"] == n and pool.stats()["read"] == 2 * n


def test_spawned_multiprocessing_consumer(inst):
    import multiprocessing as mp

    pool = inst.create_pool("p", 1 << 12, 2)
    ref = pool.put(np.arange(100, dtype=np.int16))
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as p:
        total = p.apply(_sum_slot, (inst.name, tuple(ref)))
    assert total == sum(range(100))
    assert pool.free_slots() == 2


def _sum_slot(instance, ref):
    pool = SlotPool.attach(instance, "p")
    ref = SlotRef(*ref)
    with pool.view(ref) as a:
        return int(a.sum())


HOLDER = """
import sys, time
from shm import SlotPool, SlotRef
pool = SlotPool.attach(sys.argv[1], "p")
a = pool.read(SlotRef("p", int(sys.argv[2]), int(sys.argv[3])))
print("holding", int(a.sum()), flush=True)
time.sleep(60)
"""


def test_consumer_killed_while_holding_slot_gives_it_back(inst, children):
    pool = inst.create_pool("p", 1024, 1)
    ref = pool.put(np.ones(10, np.int64))
    holder = python_c(HOLDER, inst.name, str(ref.slot), str(ref.generation))
    children.append(holder)
    assert wait_line(holder, "holding") == "holding 10"
    assert pool.holders(ref.slot) == [holder.pid]
    with pytest.raises(PoolExhaustedError):
        pool.acquire(timeout=0.1)  # held by a live reader: not reclaimed
    holder.send_signal(signal.SIGKILL)
    holder.wait(EXIT_TIMEOUT_S)
    loan = pool.acquire(timeout=5)  # reclaimed from the dead holder
    assert loan.slot == ref.slot and loan.generation == ref.generation + 1
    loan.abort()
    assert pool.stats()["dropped"] == 1


WRITER_KILLED = """
import sys, time, numpy as np
from shm import SlotPool
pool = SlotPool.attach(sys.argv[1], "p")
loan = pool.acquire()
loan.array((8,), np.float32)[:] = 1
print("writing", loan.slot, flush=True)
time.sleep(60)
"""


def test_producer_killed_mid_write_slot_reclaimed(inst, children):
    pool = inst.create_pool("p", 1024, 1)
    w = python_c(WRITER_KILLED, inst.name)
    children.append(w)
    wait_line(w, "writing")
    assert pool.slot_states()["writing"] == 1
    w.send_signal(signal.SIGKILL)
    w.wait(EXIT_TIMEOUT_S)
    ref = pool.put(np.zeros(3), timeout=5)
    assert ref.generation == 2
    pool.release(ref)


def test_unread_slot_of_dead_consumer_reclaimed_by_age(inst):
    pool = inst.create_pool("p", 64, 1)
    ref = pool.put(np.zeros(2))  # nobody will ever read it
    assert pool.reclaim() == 0
    assert pool.reclaim(unread_older_than=0.0) == 1
    with pytest.raises(StaleSlotError):
        pool.read(ref)
