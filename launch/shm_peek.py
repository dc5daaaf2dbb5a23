"""Passive views of shm channels for the topic tools: they map the channel file READ-ONLY and
never register as a holder or consumer, so an inspector cannot take, hold or release a slot
that belongs to a stage, nor appear in a ring's consumer table.

A slot is copied and then its generation and state re-checked (the seqlock idea): a copy that
raced with a reuse of the slot is thrown away, never shown. Ring entries use the ring's own
per-entry sequence words the same way.

Layout knowledge comes from shm.pool / shm.ring (their dtypes and constants); shm offers no
public non-holding peek yet (noted in the issue report).
"""
from __future__ import annotations

import ast
import mmap
import os
from dataclasses import dataclass

import numpy as np

from shm._paths import POOL_SUFFIX, RING_SUFFIX, channel_path
from shm._segment import HEADER_BYTES, HEADER_DTYPE, round_up


def _map_readonly(path: str) -> mmap.mmap:
    fd = os.open(path, os.O_RDONLY)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)


@dataclass
class SlotSnapshot:
    channel: str
    slot: int
    generation: int
    commit_ns: int
    writer_pid: int
    dtype: str
    shape: tuple
    nbytes: int
    data: np.ndarray | None   # a private copy (None when only the header was taken)


class PoolPeeker:
    def __init__(self, instance: str, name: str, root=None):
        from shm.pool import SLOT_ALIGN, SLOT_DTYPE

        self.name = name
        self.mm = _map_readonly(channel_path(instance, name, POOL_SUFFIX, root))
        self.header = np.ndarray((), dtype=HEADER_DTYPE, buffer=self.mm, offset=0)
        self.slot_bytes = int(self.header["item_bytes"])
        self.n_slots = int(self.header["count"])
        self._slots = np.ndarray((self.n_slots,), dtype=SLOT_DTYPE, buffer=self.mm, offset=HEADER_BYTES)
        self._stride = round_up(max(self.slot_bytes, 1), SLOT_ALIGN)
        self._data_offset = HEADER_BYTES + round_up(self.n_slots * SLOT_DTYPE.itemsize, SLOT_ALIGN)
        self._seen: set[tuple[int, int]] = set()
        # Slots already committed when we started are not "new".
        for i in range(self.n_slots):
            self._seen.add((i, int(self._slots[i]["generation"])))

    @property
    def written(self) -> int:
        return int(self.header["written"])

    def new_commits(self, *, with_data: bool = True) -> list[SlotSnapshot]:
        """Slots committed since the last call (ready now, generation not seen before)."""
        from shm.pool import READY

        out = []
        for i in range(self.n_slots):
            s = self._slots[i]
            gen = int(s["generation"])
            if (i, gen) in self._seen or int(s["state"]) != READY:
                continue
            snap = self.snapshot(i, gen, with_data=with_data)
            if snap is not None:
                self._seen.add((i, gen))
                out.append(snap)
        return sorted(out, key=lambda s: s.commit_ns)

    def snapshot(self, slot: int, generation: int, *, with_data: bool = True) -> SlotSnapshot | None:
        from shm.pool import BF16, READY

        s = self._slots[slot]
        ndim = int(s["ndim"])
        code = bytes(s["dtype"]).decode()
        shape = tuple(int(d) for d in s["shape"][:ndim])
        nbytes = int(s["nbytes"])
        commit_ns, writer = int(s["commit_ns"]), int(s["writer_pid"])
        data = None
        if with_data and nbytes <= self.slot_bytes:
            npd = np.dtype("<u2") if code == BF16 else np.dtype(code)
            off = self._data_offset + slot * self._stride
            data = np.ndarray(shape, dtype=npd, buffer=self.mm, offset=off).copy()
        # Re-check: if the slot moved on while we copied, the copy may be torn.
        if int(s["generation"]) != generation or int(s["state"]) != READY:
            return None
        return SlotSnapshot(self.name, slot, generation, commit_ns, writer, code, shape, nbytes, data)

    def close(self) -> None:
        self.header = self._slots = None
        try:
            self.mm.close()
        except BufferError:
            pass


class RingPeeker:
    def __init__(self, instance: str, name: str, root=None, *, start: str = "latest"):
        from shm.ring import _entry_dtype

        self.name = name
        self.mm = _map_readonly(channel_path(instance, name, RING_SUFFIX, root))
        self.header = np.ndarray((), dtype=HEADER_DTYPE, buffer=self.mm, offset=0)
        self.capacity = int(self.header["count"])
        self.record_dtype = np.lib.format.descr_to_dtype(
            ast.literal_eval(self.header["dtype_descr"][()].rstrip(b"\0").decode()))
        self._entries = np.ndarray((self.capacity,), dtype=_entry_dtype(self.record_dtype),
                                   buffer=self.mm, offset=HEADER_BYTES)
        head = self.written
        self.cursor = head if start == "latest" else max(0, head - self.capacity)
        self.lost = 0

    @property
    def written(self) -> int:
        return int(self.header["head"])

    def read(self) -> np.ndarray:
        """Records written since the last call (a private copy); lapped records are counted
        in `lost` and skipped."""
        head, cap = self.written, self.capacity
        cursor = self.cursor
        if head - cursor > cap:
            self.lost += head - cursor - cap
            cursor = head - cap
        n = head - cursor
        if n <= 0:
            return np.empty(0, dtype=self.record_dtype)
        seqs = np.arange(cursor, cursor + n, dtype=np.uint64)
        idx = (seqs % cap).astype(np.intp)
        expected = 2 * seqs + 2
        before = self._entries["seq"][idx]
        recs = self._entries["rec"][idx].copy()
        after = self._entries["seq"][idx]
        bad = np.flatnonzero((before != expected) | (after != expected))
        if len(bad):
            k = int(bad[-1]) + 1
            self.lost += k
            recs = recs[k:]
        self.cursor = cursor + n
        return recs

    def close(self) -> None:
        self.header = self._entries = None
        try:
            self.mm.close()
        except BufferError:
            pass


def summarize(arr: np.ndarray) -> dict:
    """Summary statistics of a tensor (what echo prints instead of megabytes of numbers)."""
    if arr.size == 0:
        return {"size": 0}
    a = arr.astype(np.float64, copy=False)
    return {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
            "std": float(a.std()), "nonzero": int(np.count_nonzero(arr)),
            "checksum": int(np.frombuffer(np.ascontiguousarray(arr).tobytes(), np.uint8)
                            .astype(np.uint64).sum())}
