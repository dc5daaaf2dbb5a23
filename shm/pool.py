"""Slot pool: N fixed-size slots holding variable-shaped tensors, zero-copy on read.

Life of a slot:  FREE --acquire--> WRITING --commit(readers=k)--> READY --k releases--> FREE
Every acquire bumps the slot's generation; a SlotRef carries the generation it was written
with, so a reader holding an old ref gets StaleSlotError instead of someone else's data.
A reader is recorded as holder (pid + process start time) while it holds a view; when a
writer or holder dies, reclaim() gives its slot back (acquire() does so when the pool is full).
"""
from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import numpy as np

from . import _proc
from ._paths import POOL_SUFFIX, channel_path, validate_name
from ._segment import HEADER_BYTES, KIND_POOL, Segment, require_instance_dir, round_up
from .errors import PayloadError, PoolExhaustedError, StaleSlotError, TooManyConsumersError

FREE, WRITING, READY = 0, 1, 2
STATE_NAMES = {FREE: "free", WRITING: "writing", READY: "ready"}
MAX_NDIM = 8
MAX_HOLDERS = 8
BF16 = "bf16"  # numpy has no bfloat16: stored as raw uint16, torch views reinterpret it
SLOT_ALIGN = 4096

SLOT_DTYPE = np.dtype(
    {
        "names": [
            "state", "ndim", "generation", "pending", "nbytes", "commit_ns",
            "writer_pid", "writer_start", "dtype", "shape",
            "holder_pid", "holder_start", "holder_count",
        ],
        "formats": [
            "<u4", "<u4", "<u8", "<i8", "<u8", "<u8",
            "<i8", "<u8", "S16", ("<u8", MAX_NDIM),
            ("<i8", MAX_HOLDERS), ("<u8", MAX_HOLDERS), ("<i8", MAX_HOLDERS),
        ],
        "itemsize": 384,
    }
)


class SlotRef(NamedTuple):
    """What travels over the control plane: (channel, slot index, generation).

    A plain tuple, so pickle and msgpack handle it (msgpack gives back a list: rebuild it with
    SlotRef(*lst) or SlotRef.unpack)."""

    channel: str
    slot: int
    generation: int

    def pack(self) -> bytes:
        import msgpack

        return msgpack.packb(tuple(self))

    @classmethod
    def unpack(cls, data: bytes | list | tuple) -> "SlotRef":
        if isinstance(data, (bytes, bytearray, memoryview)):
            import msgpack

            data = msgpack.unpackb(data)
        return cls(*data)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def _dtype_code(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufc":
        raise PayloadError(
            f"unsupported dtype {dtype}: slots hold plain bool, integer, float or complex arrays"
        )
    return dtype.str


def _np_dtype(code: str) -> np.dtype:
    return np.dtype("<u2") if code == BF16 else np.dtype(code)


def _torch_code_and_numpy(t) -> tuple[str, np.dtype]:
    import torch

    if t.dtype == torch.bfloat16:
        return BF16, np.dtype("<u2")
    try:
        npd = torch.empty(0, dtype=t.dtype).numpy().dtype
    except TypeError as e:
        raise PayloadError(f"unsupported torch dtype {t.dtype} for a slot: {e}") from None
    return _dtype_code(npd), npd


class WriteLoan:
    """A slot acquired by the producer: fill it (write() or array()), then commit() or abort()."""

    def __init__(self, pool: "SlotPool", slot: int, generation: int):
        self.pool = pool
        self.slot = slot
        self.generation = generation
        self._described = False
        self._done = False

    def _describe(self, code: str, shape: tuple[int, ...]) -> tuple[np.dtype, int]:
        pool = self.pool
        npd = _np_dtype(code)
        if len(shape) > MAX_NDIM:
            raise PayloadError(f"channel {pool.name!r}: {len(shape)} dimensions, at most {MAX_NDIM} are supported")
        if any(int(d) < 0 for d in shape):
            raise PayloadError(f"channel {pool.name!r}: negative dimension in shape {shape}")
        if pool.dtype_constraint is not None and code != pool.dtype_constraint:
            raise PayloadError(
                f"channel {pool.name!r} carries dtype {pool.dtype_constraint}, got {code}"
            )
        nbytes = math.prod(int(d) for d in shape) * npd.itemsize
        if nbytes > pool.slot_bytes:
            raise PayloadError(
                f"payload of {nbytes} bytes (shape {tuple(shape)}, dtype {code}) does not fit a slot of "
                f"channel {pool.name!r} ({pool.slot_bytes} bytes)"
            )
        i = self.slot
        pool._f_dtype[i] = code.encode()
        pool._f_ndim[i] = len(shape)
        row = pool._f_shape[i]
        row[:] = 0
        row[: len(shape)] = shape
        pool._f_nbytes[i] = nbytes
        self._described = True
        return npd, nbytes

    def array(self, shape, dtype) -> np.ndarray:
        """A writable numpy view of the slot with this shape and dtype, to produce data in place."""
        shape = tuple(int(d) for d in shape) if isinstance(shape, (tuple, list)) else (int(shape),)
        code = BF16 if dtype == BF16 else _dtype_code(dtype)
        npd, _ = self._describe(code, shape)
        return np.ndarray(shape, dtype=npd, buffer=self.pool._seg.mm, offset=self.pool._slot_offset(self.slot))

    def write(self, data) -> None:
        """Copy a numpy array or torch tensor (CPU, or CUDA: one device-to-host copy) into the slot."""
        pool = self.pool
        off = pool._slot_offset(self.slot)
        mm = pool._seg.mm
        if _is_torch(data):
            import torch

            code, npd = _torch_code_and_numpy(data)
            shape = tuple(data.shape)
            self._describe(code, shape)
            dst = torch.from_numpy(np.ndarray(shape, dtype=npd, buffer=mm, offset=off))
            if code == BF16:
                dst = dst.view(torch.bfloat16)
            dst.copy_(data.detach())
            return
        src = np.asarray(data)
        code = _dtype_code(src.dtype)
        self._describe(code, src.shape)
        np.copyto(np.ndarray(src.shape, dtype=src.dtype, buffer=mm, offset=off), src, casting="no")

    def commit(self, readers: int = 1) -> SlotRef:
        """Publish the slot for `readers` releases; returns the ref to hand to the consumers."""
        if self._done:
            raise StaleSlotError(f"slot {self.slot} of channel {self.pool.name!r} was already committed or aborted")
        if not self._described:
            raise PayloadError(f"channel {self.pool.name!r}: commit() before write() or array()")
        if readers < 1:
            raise ValueError(f"readers must be >= 1, got {readers}")
        return self.pool._commit(self, readers)

    def abort(self) -> None:
        if not self._done:
            self.pool._abort(self)


class SlotPool:
    """A named pool of `n_slots` slots of `slot_bytes` each, in one mmap'd file."""

    def __init__(self, seg: Segment, instance: str, name: str):
        self._seg = seg
        self.instance = instance
        self.name = name
        h = seg.header
        self.slot_bytes = int(h["item_bytes"])
        self.n_slots = int(h["count"])
        self._stride = round_up(max(self.slot_bytes, 1), SLOT_ALIGN)
        table_bytes = round_up(self.n_slots * SLOT_DTYPE.itemsize, SLOT_ALIGN)
        self._data_offset = HEADER_BYTES + table_bytes
        self._slots = np.ndarray((self.n_slots,), dtype=SLOT_DTYPE, buffer=seg.mm, offset=HEADER_BYTES)
        # One plain array view per field: indexing these is several times cheaper than going
        # through structured records, and these calls sit on every read and write.
        sl = self._slots
        self._f_state, self._f_gen, self._f_pending = sl["state"], sl["generation"], sl["pending"]
        self._f_nbytes, self._f_commit, self._f_dtype = sl["nbytes"], sl["commit_ns"], sl["dtype"]
        self._f_ndim, self._f_shape = sl["ndim"], sl["shape"]
        self._f_wpid, self._f_wstart = sl["writer_pid"], sl["writer_start"]
        self._f_hpid, self._f_hstart, self._f_hcount = sl["holder_pid"], sl["holder_start"], sl["holder_count"]
        from ._segment import HEADER_DTYPE

        # written, read, dropped, released are adjacent u64 fields of the header.
        self._producer_pid = 0
        self._ctr = np.ndarray((4,), dtype="<u8", buffer=seg.mm, offset=HEADER_DTYPE.fields["written"][1])
        descr = h["dtype_descr"][()].decode()
        self.dtype_constraint: str | None = descr or None
        self.path = seg.path

    # --- creation -----------------------------------------------------------------------
    @classmethod
    def create(cls, instance: str, name: str, slot_bytes: int, n_slots: int, *, dtype=None, root=None) -> "SlotPool":
        """Create the pool file <root>/autoglm-<instance>/<name>.pool (mode 0600).
        `dtype` optionally restricts every payload to one dtype (numpy dtype or "bf16")."""
        validate_name(name, "channel name")
        if int(slot_bytes) <= 0 or int(n_slots) <= 0:
            raise ValueError(f"slot_bytes and n_slots must be positive, got {slot_bytes} and {n_slots}")
        require_instance_dir(instance, root)
        slot_bytes, n_slots = int(slot_bytes), int(n_slots)
        code = "" if dtype is None else (BF16 if dtype == BF16 else _dtype_code(dtype))
        size = (
            HEADER_BYTES
            + round_up(n_slots * SLOT_DTYPE.itemsize, SLOT_ALIGN)
            + n_slots * round_up(slot_bytes, SLOT_ALIGN)
        )

        def init(seg: Segment) -> None:
            h = seg.header
            h["item_bytes"] = slot_bytes
            h["count"] = n_slots
            h["dtype_descr"] = code.encode()

        seg = Segment.create(channel_path(instance, name, POOL_SUFFIX, root), size, KIND_POOL, name, init)
        return cls(seg, instance, name)

    @classmethod
    def attach(cls, instance: str, name: str, *, root=None) -> "SlotPool":
        require_instance_dir(instance, root)
        seg = Segment.attach(channel_path(instance, name, POOL_SUFFIX, root), KIND_POOL, name)
        return cls(seg, instance, name)

    def close(self) -> None:
        self._slots = self._ctr = None
        for k in [k for k in vars(self) if k.startswith("_f_")]:
            setattr(self, k, None)
        self._seg.close()

    def unlink(self) -> None:
        self._seg.unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _slot_offset(self, slot: int) -> int:
        return self._data_offset + slot * self._stride

    # --- producer side ------------------------------------------------------------------
    def try_acquire(self) -> WriteLoan | None:
        pid, start = _proc.self_identity()
        with self._seg:
            # Lowest free index: the slot just released is reused while still in the CPU
            # caches (round-robin over 4 x 4 MiB slots measured ~40% slower per put).
            try:
                i = self._f_state.tolist().index(FREE)
            except ValueError:
                return None
            gen = int(self._f_gen[i]) + 1
            self._f_gen[i] = gen
            self._f_state[i] = WRITING
            self._f_wpid[i] = pid
            self._f_wstart[i] = start
            self._f_pending[i] = 0
            if self._producer_pid != pid:  # record the producer once, not on every acquire
                h = self._seg.header
                h["producer_pid"] = pid
                h["producer_start"] = start
                self._producer_pid = pid
            return WriteLoan(self, i, gen)

    def acquire(self, timeout: float | None = None) -> WriteLoan:
        """A free slot to write. Waits up to `timeout` seconds (None: forever) for consumers to
        release one, reclaiming slots of dead processes on the way; raises PoolExhaustedError."""
        loan = self.try_acquire()
        if loan is not None:
            return loan
        deadline = None if timeout is None else time.monotonic() + timeout
        # Producer-side backpressure only: a short sleep between tries, not a spinning loop.
        delay = 20e-6
        next_reclaim = 0.0
        while True:
            now = time.monotonic()
            if now >= next_reclaim:
                self.reclaim()
                next_reclaim = now + 0.05
            loan = self.try_acquire()
            if loan is not None:
                return loan
            if deadline is not None and now >= deadline:
                raise PoolExhaustedError(
                    f"no free slot in channel {self.name!r} after {timeout}s: all {self.n_slots} slots "
                    f"are being written or held by readers ({self.slot_states()})"
                )
            time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - now)))
            delay = min(delay * 2, 2e-3)

    def put(self, data, *, readers: int = 1, timeout: float | None = None) -> SlotRef:
        """acquire + write (one memcpy) + commit."""
        loan = self.acquire(timeout)
        try:
            loan.write(data)
        except BaseException:
            loan.abort()
            raise
        return loan.commit(readers)

    def _commit(self, loan: WriteLoan, readers: int) -> SlotRef:
        i = loan.slot
        with self._seg:
            gen = int(self._f_gen[i])
            if gen != loan.generation or self._f_state[i] != WRITING:
                raise StaleSlotError(
                    f"slot {i} of channel {self.name!r} was reclaimed while being written "
                    f"(loan generation {loan.generation}, slot now at {gen})"
                )
            self._f_pending[i] = readers
            self._f_commit[i] = time.monotonic_ns()
            self._f_state[i] = READY
            self._ctr[0] += 1
        loan._done = True
        return SlotRef(self.name, loan.slot, loan.generation)

    def _abort(self, loan: WriteLoan) -> None:
        i = loan.slot
        with self._seg:
            if int(self._f_gen[i]) == loan.generation and self._f_state[i] == WRITING:
                self._f_state[i] = FREE
        loan._done = True

    # --- consumer side ------------------------------------------------------------------
    def _check(self, ref: SlotRef, i: int) -> None:
        if ref.channel != self.name:
            raise StaleSlotError(f"ref for channel {ref.channel!r} used on channel {self.name!r}")
        gen = int(self._f_gen[i])
        if gen != ref.generation:
            raise StaleSlotError(
                f"slot {ref.slot} of channel {self.name!r} was reused: ref generation "
                f"{ref.generation}, slot now at generation {gen}"
            )
        state = int(self._f_state[i])
        if state != READY:
            raise StaleSlotError(
                f"slot {ref.slot} of channel {self.name!r} (generation {gen}) is "
                f"{STATE_NAMES.get(state, '?')}, not ready: released already or never committed"
            )

    def _slot_index(self, ref: SlotRef) -> int:
        if not 0 <= int(ref.slot) < self.n_slots:
            raise StaleSlotError(f"slot {ref.slot} out of range for channel {self.name!r} ({self.n_slots} slots)")
        return int(ref.slot)

    def _hold(self, ref: SlotRef) -> tuple[str, tuple[int, ...], int]:
        i = self._slot_index(ref)
        pid, start = _proc.self_identity()
        with self._seg:
            self._check(ref, i)
            pids = self._f_hpid[i].tolist()
            if pid in pids:
                self._f_hcount[i, pids.index(pid)] += 1
            else:
                if 0 not in pids:
                    raise TooManyConsumersError(
                        f"slot {i} of channel {self.name!r} is held by {MAX_HOLDERS} processes already"
                    )
                j = pids.index(0)
                self._f_hpid[i, j] = pid
                self._f_hstart[i, j] = start
                self._f_hcount[i, j] = 1
            self._ctr[1] += 1
            ndim = int(self._f_ndim[i])
            return self._f_dtype[i].decode(), tuple(self._f_shape[i, :ndim].tolist()), int(self._f_nbytes[i])

    def read(self, ref: SlotRef, *, dtype=None, shape=None) -> np.ndarray:
        """Zero-copy read-only numpy view of the slot's tensor; the caller holds the slot until
        release(ref). bf16 payloads come back as their raw uint16 bits (use read_torch).
        `dtype`/`shape`, when given, are checked against what the producer wrote."""
        code, shp, _ = self._hold(ref)
        if dtype is not None or shape is not None:
            try:
                self._expect(ref, code, shp, dtype, shape)
            except PayloadError:
                self._unhold(ref)  # undo the hold; the share stays for a correct read
                raise
        arr = np.ndarray(shp, dtype=_np_dtype(code), buffer=self._seg.mm, offset=self._slot_offset(ref.slot))
        arr.flags.writeable = False
        return arr

    def read_torch(self, ref: SlotRef, *, dtype=None, shape=None):
        """Zero-copy CPU torch tensor over the slot (torch imported only here). The tensor is
        technically writable (torch has no read-only tensors); consumers must not write it."""
        import torch

        code, shp, _ = self._hold(ref)
        try:
            self._expect(ref, code, shp, dtype, shape)
        except PayloadError:
            self._unhold(ref)
            raise
        arr = np.ndarray(shp, dtype=_np_dtype(code), buffer=self._seg.mm, offset=self._slot_offset(ref.slot))
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if code == BF16 else t

    def _expect(self, ref, code, shp, dtype, shape) -> None:
        if dtype is not None:
            want = dtype if dtype == BF16 else None
            if want is None:
                try:
                    import torch  # noqa: F401  (only if a torch dtype was passed)

                    if type(dtype).__module__ == "torch":
                        want = BF16 if dtype == torch.bfloat16 else _dtype_code(torch.empty(0, dtype=dtype).numpy().dtype)
                except ImportError:
                    pass
            if want is None:
                want = _dtype_code(dtype)
            if want != code:
                raise PayloadError(f"slot {ref.slot} of channel {self.name!r} holds dtype {code}, expected {want}")
        if shape is not None and tuple(shape) != shp:
            raise PayloadError(f"slot {ref.slot} of channel {self.name!r} holds shape {shp}, expected {tuple(shape)}")

    def view(self, ref: SlotRef, **expect):
        """Context manager: `with pool.view(ref) as arr:` reads and releases on exit."""
        pool = self

        class _View:
            def __enter__(self_inner):
                return pool.read(ref, **expect)

            def __exit__(self_inner, *exc):
                pool.release(ref)

        return _View()

    def release(self, ref: SlotRef) -> None:
        """Give back one share of the slot (whether or not this process read it)."""
        self._drop(ref, share=True)

    def _unhold(self, ref: SlotRef) -> None:
        self._drop(ref, share=False)

    def _drop(self, ref: SlotRef, share: bool) -> None:
        i = self._slot_index(ref)
        pid, _ = _proc.self_identity()
        with self._seg:
            self._check(ref, i)
            pids = self._f_hpid[i].tolist()
            if pid in pids:
                j = pids.index(pid)
                left = int(self._f_hcount[i, j]) - 1
                self._f_hcount[i, j] = left
                if left <= 0:
                    self._f_hpid[i, j] = 0
                    self._f_hstart[i, j] = 0
                    self._f_hcount[i, j] = 0
            if share:
                self._f_pending[i] -= 1
                self._ctr[3] += 1
            self._maybe_free(i)

    def _maybe_free(self, i: int) -> bool:
        if self._f_pending[i] <= 0 and not self._f_hpid[i].any():
            self._f_state[i] = FREE
            return True
        return False

    # --- recovery -----------------------------------------------------------------------
    def reclaim(self, unread_older_than: float | None = None) -> int:
        """Give back slots whose writer or holders died. With `unread_older_than` (seconds),
        also slots committed that long ago that no live process holds (a consumer died before
        reading; their refs then get StaleSlotError). Returns how many slots came back."""
        freed = 0
        now = time.monotonic_ns()
        with self._seg:
            for i in range(self.n_slots):
                state = int(self._f_state[i])
                if state == WRITING:
                    if not _proc.is_alive(int(self._f_wpid[i]), int(self._f_wstart[i])):
                        self._f_state[i] = FREE
                        freed += 1
                elif state == READY:
                    for j, pid in enumerate(self._f_hpid[i].tolist()):
                        if pid and not _proc.is_alive(pid, int(self._f_hstart[i, j])):
                            self._f_pending[i] -= int(self._f_hcount[i, j])
                            self._f_hpid[i, j] = 0
                            self._f_hstart[i, j] = 0
                            self._f_hcount[i, j] = 0
                    if (
                        unread_older_than is not None
                        and not self._f_hpid[i].any()
                        and now - int(self._f_commit[i]) >= unread_older_than * 1e9
                    ):
                        self._f_pending[i] = 0
                    if self._maybe_free(i):
                        freed += 1
            if freed:
                self._ctr[2] += freed
        return freed

    # --- introspection ------------------------------------------------------------------
    def slot_states(self) -> dict[str, int]:
        states = self._f_state
        return {name: int((states == code).sum()) for code, name in STATE_NAMES.items()}

    def free_slots(self) -> int:
        return int((self._f_state == FREE).sum())

    def holders(self, slot: int) -> list[int]:
        return [p for p in self._f_hpid[slot].tolist() if p]

    def stats(self) -> dict[str, int]:
        h = self._seg.header
        return {k: int(h[k]) for k in ("written", "read", "released", "dropped")}
