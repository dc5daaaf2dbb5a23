"""Ring: one producer, any number of consumers, small fixed-size records (token records).

Each entry carries a sequence word next to the record (a per-entry seqlock): the writer of
record n stores 2n+1, then the record, then 2n+2. A reader copies the record between two
reads of that word and keeps it only if both equal 2n+2, so it never returns a torn or
overwritten record; a reader lapped by the writer skips ahead and is told how many records
it lost. The scheme relies on stores becoming visible in program order, which x86-64 (TSO)
guarantees; every access here is a separate call into numpy, so the compiler cannot reorder
them either. (On weakly ordered CPUs such as aarch64 it would need explicit fences.)

Consumers register in a table in the header page, so their cursors, read and lost counts are
visible to `autoglm shm ls` and the topic tools.
"""
from __future__ import annotations

import ast
import time
from typing import NamedTuple

import numpy as np

from . import _proc
from ._paths import RING_SUFFIX, channel_path, validate_name
from ._segment import HEADER_BYTES, KIND_RING, Segment, require_instance_dir, round_up
from .errors import PayloadError, RingBusyError, TooManyConsumersError

MAX_CONSUMERS = 32
CONSUMER_DTYPE = np.dtype(
    {
        "names": ["pid", "start", "cursor", "read", "lost"],
        "formats": ["<i8", "<u8", "<u8", "<u8", "<u8"],
        "itemsize": 64,
    }
)
CONSUMERS_OFFSET = 2048  # inside the header page, after the common header
assert CONSUMERS_OFFSET + MAX_CONSUMERS * CONSUMER_DTYPE.itemsize <= HEADER_BYTES
# Without a doorbell message, a blocked reader still re-checks the ring this often: a safety
# net for wake-ups lost while a subscription was still being set up or a writer restarted.
RECHECK_S = 0.1


def _entry_dtype(record: np.dtype) -> np.dtype:
    return np.dtype(
        {"names": ["seq", "rec"], "formats": ["<u8", record], "offsets": [0, 8], "itemsize": round_up(8 + record.itemsize, 8)}
    )


class RingBatch(NamedTuple):
    records: np.ndarray  # structured array of the ring's record dtype (a copy: records are small)
    lost: int  # records overwritten before this reader got to them, since its previous read


class Ring:
    def __init__(self, seg: Segment, instance: str, name: str, root=None):
        self._seg = seg
        self.instance = instance
        self.name = name
        self._root = root
        h = seg.header
        self.capacity = int(h["count"])
        self.record_dtype = np.lib.format.descr_to_dtype(ast.literal_eval(h["dtype_descr"][()].decode()))
        self._entries = np.ndarray((self.capacity,), dtype=_entry_dtype(self.record_dtype), buffer=seg.mm, offset=HEADER_BYTES)
        self._consumers = np.ndarray((MAX_CONSUMERS,), dtype=CONSUMER_DTYPE, buffer=seg.mm, offset=CONSUMERS_OFFSET)
        self.path = seg.path

    @classmethod
    def create(cls, instance: str, name: str, record_dtype, capacity: int, *, root=None) -> "Ring":
        validate_name(name, "channel name")
        record_dtype = np.dtype(record_dtype)
        if record_dtype.hasobject:
            raise PayloadError(f"ring {name!r}: record dtype {record_dtype} holds Python objects; use fixed-size fields")
        if int(capacity) <= 0:
            raise ValueError(f"ring capacity must be positive, got {capacity}")
        require_instance_dir(instance, root)
        descr = repr(np.lib.format.dtype_to_descr(record_dtype)).encode()
        if len(descr) > 1024:
            raise PayloadError(f"ring {name!r}: record dtype description is too long ({len(descr)} > 1024 bytes)")
        entry = _entry_dtype(record_dtype)

        def init(seg: Segment) -> None:
            h = seg.header
            h["item_bytes"] = record_dtype.itemsize
            h["count"] = int(capacity)
            h["dtype_descr"] = descr

        size = HEADER_BYTES + round_up(int(capacity) * entry.itemsize, 4096)
        seg = Segment.create(channel_path(instance, name, RING_SUFFIX, root), size, KIND_RING, name, init)
        return cls(seg, instance, name, root)

    @classmethod
    def attach(cls, instance: str, name: str, *, root=None) -> "Ring":
        require_instance_dir(instance, root)
        seg = Segment.attach(channel_path(instance, name, RING_SUFFIX, root), KIND_RING, name)
        return cls(seg, instance, name, root)

    def writer(self, *, doorbell: bool = True) -> "RingWriter":
        """The ring's single producer; refuses while another live process is its writer."""
        return RingWriter(self, doorbell)

    def reader(self, *, start: str = "latest") -> "RingReader":
        """A consumer with its own cursor; start="latest" (only new records) or "oldest"."""
        if start not in ("latest", "oldest"):
            raise ValueError(f"start must be 'latest' or 'oldest', got {start!r}")
        return RingReader(self, start)

    @property
    def written(self) -> int:
        return int(self._seg.header["head"])

    def consumers(self) -> list[dict]:
        c = self._consumers
        return [
            {"pid": int(c[i]["pid"]), "cursor": int(c[i]["cursor"]), "read": int(c[i]["read"]), "lost": int(c[i]["lost"]),
             "alive": _proc.is_alive(int(c[i]["pid"]), int(c[i]["start"]))}
            for i in range(MAX_CONSUMERS) if c[i]["pid"]
        ]

    def stats(self) -> dict[str, int]:
        h = self._seg.header
        c = self._consumers[self._consumers["pid"] != 0]
        return {
            "written": int(h["head"]),
            "read": int(h["read"]) + int(c["read"].sum()),
            "dropped": int(h["dropped"]) + int(c["lost"].sum()),
        }

    def close(self) -> None:
        self._entries = self._consumers = None
        self._seg.close()

    def unlink(self) -> None:
        self._seg.unlink()


class RingWriter:
    def __init__(self, ring: Ring, doorbell: bool):
        self.ring = ring
        pid, start = _proc.self_identity()
        h = ring._seg.header
        with ring._seg:
            owner, owner_start = int(h["producer_pid"]), int(h["producer_start"])
            if owner and owner != pid and _proc.is_alive(owner, owner_start):
                raise RingBusyError(f"ring {ring.name!r} already has a live writer (pid {owner})")
            h["producer_pid"] = pid
            h["producer_start"] = start
        self._seq = ring._entries["seq"]
        self._rec = ring._entries["rec"]
        self._bell = None
        if doorbell:
            from .doorbell import Doorbell

            self._bell = Doorbell.bind(ring.instance, ring.name, root=ring._root)

    def write(self, record) -> int:
        """Append one record (a tuple or a 0-d array of the record dtype); returns its sequence number."""
        return self.write_many(np.asarray([record] if not isinstance(record, np.ndarray) or record.ndim == 0 else record, dtype=self.ring.record_dtype))

    def write_many(self, records) -> int:
        """Append records in order; returns the sequence number of the last one."""
        ring = self.ring
        records = np.asarray(records)
        if records.dtype != ring.record_dtype:
            try:
                records = records.astype(ring.record_dtype, casting="same_kind")
            except (TypeError, ValueError) as e:
                raise PayloadError(f"ring {ring.name!r} takes records of dtype {ring.record_dtype}, got {records.dtype}: {e}") from None
        n = len(records)
        if n == 0:
            return int(ring._seg.header["head"]) - 1
        h = ring._seg.header
        head = int(h["head"])
        cap = ring.capacity
        # Only the newest `cap` records of an oversized batch can survive anyway.
        if n > cap:
            records = records[-cap:]
            head += n - cap
            n = cap
        seqs = np.arange(head, head + n, dtype=np.uint64)
        idx = (seqs % cap).astype(np.intp)
        self._seq[idx] = 2 * seqs + 1
        self._rec[idx] = records
        self._seq[idx] = 2 * seqs + 2
        h["head"] = head + n
        h["written"] = head + n
        if self._bell is not None:
            self._bell.ring()
        return head + n - 1

    def close(self) -> None:
        if self._bell is not None:
            self._bell.close()
            self._bell = None


class RingReader:
    def __init__(self, ring: Ring, start: str):
        self.ring = ring
        pid, pstart = _proc.self_identity()
        c = ring._consumers
        h = ring._seg.header
        with ring._seg:
            free = None
            for i in range(MAX_CONSUMERS):
                p = int(c[i]["pid"])
                if p == 0 or not _proc.is_alive(p, int(c[i]["start"])):
                    if p:  # fold a dead consumer's counts into the channel totals
                        h["read"] += c[i]["read"]
                        h["dropped"] += c[i]["lost"]
                    free = i
                    break
            if free is None:
                raise TooManyConsumersError(f"ring {ring.name!r} already has {MAX_CONSUMERS} consumers")
            head = int(h["head"])
            cursor = head if start == "latest" else max(0, head - ring.capacity)
            c[free] = (pid, pstart, cursor, 0, 0)
        self._slot = free
        self._me = c[free : free + 1]
        self.cursor = cursor
        self.lost = 0  # cumulative
        self.read_count = 0
        self._seq = ring._entries["seq"]
        self._rec = ring._entries["rec"]
        self._bell = None
        self._abell = None

    def available(self) -> int:
        return int(self.ring._seg.header["head"]) - self.cursor

    def try_read(self, max_n: int | None = None) -> RingBatch:
        ring = self.ring
        cap = ring.capacity
        head = int(ring._seg.header["head"])
        lost = 0
        cursor = self.cursor
        if head - cursor > cap:
            lost = head - cursor - cap
            cursor = head - cap
        n = head - cursor
        if max_n is not None:
            n = min(n, int(max_n))
        if n <= 0:
            records = np.empty(0, dtype=ring.record_dtype)
        else:
            seqs = np.arange(cursor, cursor + n, dtype=np.uint64)
            idx = (seqs % cap).astype(np.intp)
            expected = 2 * seqs + 2
            before = self._seq[idx]
            records = self._rec[idx]
            after = self._seq[idx]
            bad = np.flatnonzero((before != expected) | (after != expected))
            if len(bad):
                # The writer lapped us while we copied: everything up to the last damaged
                # entry is lost (the writer overwrites oldest first).
                k = int(bad[-1]) + 1
                lost += k
                records = records[k:]
            cursor += n
        self.cursor = cursor
        self.lost += lost
        self.read_count += len(records)
        me = self._me
        me["cursor"] = cursor
        me["read"] = self.read_count
        me["lost"] = self.lost
        return RingBatch(records, lost)

    def read(self, max_n: int | None = None, timeout: float | None = None) -> RingBatch:
        """Records not yet seen (up to max_n). Blocks on the doorbell until at least one record
        or a loss is there, or `timeout` seconds pass (None: forever, 0: do not wait)."""
        batch = self.try_read(max_n)
        if len(batch.records) or batch.lost or timeout == 0:
            return batch
        if self._bell is None:
            from .doorbell import Doorbell

            self._bell = Doorbell.connect(self.ring.instance, self.ring.name, root=self.ring._root)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = RECHECK_S if deadline is None else min(RECHECK_S, deadline - time.monotonic())
            if remaining <= 0:
                return batch
            self._bell.wait(remaining)
            batch = self.try_read(max_n)
            if len(batch.records) or batch.lost:
                return batch

    async def aread(self, max_n: int | None = None, timeout: float | None = None) -> RingBatch:
        """asyncio variant of read() for the gateway's event loop."""
        batch = self.try_read(max_n)
        if len(batch.records) or batch.lost or timeout == 0:
            return batch
        if self._abell is None:
            from .doorbell import AsyncDoorbellListener

            self._abell = AsyncDoorbellListener(self.ring.instance, self.ring.name, root=self.ring._root)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = RECHECK_S if deadline is None else min(RECHECK_S, deadline - time.monotonic())
            if remaining <= 0:
                return batch
            await self._abell.wait(remaining)
            batch = self.try_read(max_n)
            if len(batch.records) or batch.lost:
                return batch

    def close(self) -> None:
        """Leave the consumer table (counts are folded into the channel totals)."""
        ring = self.ring
        if self._slot is None:
            return
        with ring._seg:
            h = ring._seg.header
            h["read"] += self.read_count
            h["dropped"] += self.lost
            ring._consumers[self._slot] = (0, 0, 0, 0, 0)
        self._slot = None
        for b in (self._bell, self._abell):
            if b is not None:
                b.close()
        self._bell = self._abell = None
