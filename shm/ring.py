"""Ring: one producer, any number of consumers, small fixed-size records (token records).

Each entry carries a sequence word next to the record (a per-entry seqlock): the writer of
record n stores 2n+1, then the record, then 2n+2. A reader copies the record between two
reads of that word and keeps it only if both equal 2n+2, so it never returns a torn or
overwritten record; a reader lapped by the writer skips ahead and is told how many records
it lost. The scheme relies on stores becoming visible in program order, which x86-64 (TSO)
guarantees; every access here is a separate call into numpy, so the compiler cannot reorder
them either. (On weakly ordered CPUs such as aarch64 it would need explicit fences.)

Consumers register in a table in the header page, so their cursors, read and lost counts are
visible to `autoglm shm ls` and the topic tools. A blocked reader sleeps on a FIFO of its own
that the writer pokes after each write (shm.wake explains why not the zmq doorbell).

The per-record path (write of one record, read of what is new) uses precompiled structs on
the mapping for the sequence words, head and cursors: numpy scalar indexing and fancy
indexing cost several microseconds per call, more than the rest of the hand-off.
"""
from __future__ import annotations

import ast
import struct
import time
from typing import NamedTuple

import numpy as np

from . import _proc
from ._paths import RING_SUFFIX, channel_path, validate_name
from ._segment import HEADER_BYTES, HEADER_DTYPE, KIND_RING, Segment, require_instance_dir, round_up
from .errors import PayloadError, RingBusyError, TooManyConsumersError
from .wake import WAKE_FLAG_IN_ENTRY, WAKE_GEN_OFFSET, WakeReceiver, WakeSender

MAX_CONSUMERS = 32
CONSUMER_DTYPE = np.dtype(
    {
        "names": ["pid", "start", "cursor", "read", "lost", "wake"],
        "formats": ["<i8", "<u8", "<u8", "<u8", "<u8", "<u8"],
        "offsets": [0, 8, 16, 24, 32, WAKE_FLAG_IN_ENTRY],
        "itemsize": 64,
    }
)
CONSUMERS_OFFSET = 2048  # inside the header page, after the common header
assert CONSUMERS_OFFSET + MAX_CONSUMERS * CONSUMER_DTYPE.itemsize <= HEADER_BYTES
assert HEADER_DTYPE.itemsize <= WAKE_GEN_OFFSET < CONSUMERS_OFFSET
_U64 = struct.Struct("<Q")
_PROGRESS = struct.Struct("<QQQ")  # cursor, read, lost of a consumer entry
_O_HEAD = HEADER_DTYPE.fields["head"][1]
_O_WRITTEN = HEADER_DTYPE.fields["written"][1]
_O_PROGRESS = CONSUMER_DTYPE.fields["cursor"][1]
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
        self._stride = ring._entries.dtype.itemsize
        self._one = np.zeros((), dtype=ring.record_dtype)  # a single record, validated here first
        self._bell = WakeSender(ring) if doorbell else None

    def write(self, record) -> int:
        """Append one record (a tuple or a 0-d array of the record dtype); returns its sequence number."""
        if isinstance(record, np.ndarray) and record.ndim:
            return self.write_many(record)
        ring = self.ring
        one = self._one
        try:
            one[()] = record  # convert before touching the ring: a bad record leaves no trace
        except (TypeError, ValueError) as e:
            raise PayloadError(f"ring {ring.name!r} takes records of dtype {ring.record_dtype}, got {record!r}: {e}") from None
        return self._append_one(one)

    def write_packed(self, fields: struct.Struct, values: tuple) -> int:
        """Append one record given by its leading fields, packed with ``fields`` (a
        struct.Struct laid out as the record dtype's first fields: the caller's contract, see
        runtime.records.TOKEN_HEAD); the rest of the record is zeros. The per-token path:
        one pack instead of numpy record assignments, ~10 us less per record on the 2-core
        host when the cache is cold."""
        size = self.ring.record_dtype.itemsize
        if fields.size > size:
            raise PayloadError(f"ring {self.ring.name!r}: {fields.size} packed bytes exceed its "
                               f"{size}-byte records")
        mm, head, _, off = self._open()
        fields.pack_into(mm, off + 8, *values)
        mm[off + 8 + fields.size:off + 8 + size] = bytes(size - fields.size)
        self._seal(mm, off, head)
        return head

    def _append_one(self, record, head: int | None = None) -> int:
        """One checked record (of the ring's dtype) as number ``head`` (default: the next)."""
        mm, head, i, off = self._open(head)
        self._rec[i] = record
        self._seal(mm, off, head)
        return head

    def _open(self, head: int | None = None):
        """Begin the seqlock write of record ``head`` (default: the next): its entry's
        sequence word goes odd. Returns (mapping, head, ring index, entry offset)."""
        mm = self.ring._seg.mm
        if head is None:
            head = _U64.unpack_from(mm, _O_HEAD)[0]
        i = head % self.ring.capacity
        off = HEADER_BYTES + i * self._stride
        _U64.pack_into(mm, off, 2 * head + 1)  # odd: being written
        return mm, head, i, off

    def _seal(self, mm, off: int, head: int) -> None:
        """End the seqlock write of record ``head`` at ``off`` and publish it."""
        _U64.pack_into(mm, off, 2 * head + 2)
        self._publish(mm, head + 1)

    def _publish(self, mm, head: int) -> None:
        """Records up to ``head`` are complete: say so, and wake the blocked readers."""
        _U64.pack_into(mm, _O_HEAD, head)
        _U64.pack_into(mm, _O_WRITTEN, head)
        if self._bell is not None:
            self._bell.wake()

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
        mm = ring._seg.mm
        head = _U64.unpack_from(mm, _O_HEAD)[0]
        if n == 0:
            return head - 1
        cap = ring.capacity
        # Only the newest `cap` records of an oversized batch can survive anyway.
        if n > cap:
            records = records[-cap:]
            head += n - cap
            n = cap
        i = head % cap
        if n == 1:  # one request decoding: the per-token case
            return self._append_one(records[0], head)
        if i + n <= cap:  # no wrap-around: slices instead of index arrays
            seq = self._seq[i:i + n]
            seq[:] = np.arange(2 * head + 1, 2 * (head + n), 2, dtype=np.uint64)
            self._rec[i:i + n] = records
            seq += 1
        else:
            seqs = np.arange(head, head + n, dtype=np.uint64)
            idx = (seqs % cap).astype(np.intp)
            self._seq[idx] = 2 * seqs + 1
            self._rec[idx] = records
            self._seq[idx] = 2 * seqs + 2
        self._publish(mm, head + n)
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
            c[free] = (pid, pstart, cursor, 0, 0, 0)
        self._slot = free
        self._progress = CONSUMERS_OFFSET + free * CONSUMER_DTYPE.itemsize + _O_PROGRESS
        self.cursor = cursor
        self.lost = 0  # cumulative
        self.read_count = 0
        self._seq = ring._entries["seq"]
        self._rec = ring._entries["rec"]
        self._stride = ring._entries.dtype.itemsize
        self._wake = None
        self._watching = None  # (loop, fd) while watch() is on

    def available(self) -> int:
        return _U64.unpack_from(self.ring._seg.mm, _O_HEAD)[0] - self.cursor

    def try_read(self, max_n: int | None = None) -> RingBatch:
        if self._progress is None:
            raise ValueError(f"reader of ring {self.ring.name!r} is closed")
        ring = self.ring
        mm = ring._seg.mm
        cap = ring.capacity
        head = _U64.unpack_from(mm, _O_HEAD)[0]
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
        elif n == 1:  # the common case of a reader keeping up: no index arrays
            i = cursor % cap
            off = HEADER_BYTES + i * self._stride
            expected = 2 * cursor + 2
            before = _U64.unpack_from(mm, off)[0]
            records = self._rec[i : i + 1].copy()
            if before != expected or _U64.unpack_from(mm, off)[0] != expected:
                lost += 1  # overwritten while we copied it
                records = records[1:]
            cursor += 1
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
        if lost:
            self.lost += lost
        self.read_count += len(records)
        _PROGRESS.pack_into(mm, self._progress, cursor, self.read_count, self.lost)
        return RingBatch(records, lost)

    def read_latest(self) -> RingBatch:
        """The newest record alone, skipping what came before it unread, not counted as lost:
        for a reader that samples a value (the engine's load for /metrics) rather than
        consuming a stream, which would otherwise show a growing loss between samples."""
        head = _U64.unpack_from(self.ring._seg.mm, _O_HEAD)[0]
        if head - self.cursor > 1:
            self.cursor = head - 1
        return self.try_read(1)

    def _register_wake(self) -> None:
        with self.ring._seg:
            if self._slot is None:
                raise ValueError(f"reader of ring {self.ring.name!r} is closed")
        self._wake = WakeReceiver(self.ring, self._slot)

    def read(self, max_n: int | None = None, timeout: float | None = None) -> RingBatch:
        """Records not yet seen (up to max_n). Blocks until at least one record or a loss is
        there (woken by the writer), or `timeout` seconds pass (None: forever, 0: do not wait)."""
        batch = self.try_read(max_n)
        if len(batch.records) or batch.lost or timeout == 0:
            return batch
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._wake is None:
            self._register_wake()
            batch = self.try_read(max_n)  # written before the writer knew of our FIFO
            if len(batch.records) or batch.lost:
                return batch
        while True:
            remaining = RECHECK_S if deadline is None else min(RECHECK_S, deadline - time.monotonic())
            if remaining <= 0:
                return batch
            self._wake.wait(remaining)
            batch = self.try_read(max_n)
            if len(batch.records) or batch.lost:
                return batch

    async def aread(self, max_n: int | None = None, timeout: float | None = None) -> RingBatch:
        """asyncio variant of read() for the gateway's event loop (sleeps in the loop's
        selector on the same FIFO, no thread)."""
        batch = self.try_read(max_n)
        if len(batch.records) or batch.lost or timeout == 0:
            return batch
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._wake is None:
            self._register_wake()
            batch = self.try_read(max_n)
            if len(batch.records) or batch.lost:
                return batch
        while True:
            remaining = RECHECK_S if deadline is None else min(RECHECK_S, deadline - time.monotonic())
            if remaining <= 0:
                return batch
            await self._wake.wait_async(remaining)
            batch = self.try_read(max_n)
            if len(batch.records) or batch.lost:
                return batch

    def watch(self, loop, on_records) -> None:
        """Call ``on_records(batch)`` from ``loop`` (asyncio) with every batch of new records
        (or losses), as soon as the writer's wake-up makes the FIFO readable. For a consumer
        living in an event loop: the FIFO stays registered with the loop's selector and the
        records are read in the selector's callback, with no task to resume and no
        registration per wait (aread: two epoll_ctl calls and two loop iterations per
        wake-up). A timer re-checks every RECHECK_S, as read() does, for a wake-up lost
        while the FIFO was being registered. ``unwatch()`` (or close()) stops it."""
        if self._wake is None:
            self._register_wake()
        wake = self._wake

        def poll() -> None:
            wake.drain()
            while True:
                batch = self.try_read()
                if not (len(batch.records) or batch.lost):
                    return
                on_records(batch)

        def recheck() -> None:
            self._recheck = loop.call_later(RECHECK_S, recheck)
            poll()

        loop.add_reader(wake.fd, poll)
        self._watching = (loop, wake.fd)
        self._recheck = loop.call_later(RECHECK_S, recheck)
        poll()  # records written before the writer knew of our FIFO

    def unwatch(self) -> None:
        watching, self._watching = self._watching, None
        if watching is not None:
            loop, fd = watching
            self._recheck.cancel()
            if not loop.is_closed():
                loop.remove_reader(fd)

    def close(self) -> None:
        """Leave the consumer table (counts are folded into the channel totals)."""
        ring = self.ring
        if self._slot is None:
            return
        self.unwatch()
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        with ring._seg:
            h = ring._seg.header
            h["read"] += self.read_count
            h["dropped"] += self.lost
            ring._consumers[self._slot] = (0, 0, 0, 0, 0, 0)
        self._slot = self._progress = None
