"""Slot pool: N fixed-size slots holding variable-shaped tensors, zero-copy on read.

Life of a slot:  FREE --acquire--> WRITING --commit(readers=k)--> READY --k releases--> FREE
Every acquire bumps the slot's generation; a SlotRef carries the generation it was written
with, so a reader holding an old ref gets StaleSlotError instead of someone else's data.
A reader is recorded as holder (pid + process start time) while it holds a view; when a
writer or holder dies, reclaim() gives its slot back (acquire() does so when the pool is full).
"""
from __future__ import annotations

import math
import struct
import time
from typing import Any, NamedTuple

import numpy as np

from . import _proc
from ._paths import POOL_SUFFIX, channel_path, validate_name
from ._segment import HEADER_BYTES, HEADER_DTYPE, KIND_POOL, Segment, require_instance_dir, round_up
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


# The hot path reads and writes slot fields with precompiled structs straight on the mapping:
# one struct call per field group is several times cheaper than numpy scalar indexing, and it
# leaves no buffer export behind (close() can still unmap). Offsets come from SLOT_DTYPE, so
# the layout (read by launch/shm_peek.py and the registry) is defined in one place only.
_OFF = {name: SLOT_DTYPE.fields[name][1] for name in SLOT_DTYPE.names}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_STATE_NDIM_GEN = struct.Struct("<IIQ")  # state, ndim, generation: the first 16 bytes
_WRITER = struct.Struct("<qQ")  # writer_pid, writer_start
_PENDING_COMMIT = struct.Struct("<qQQ")  # pending, nbytes, commit_ns (adjacent)
_DTYPE_SHAPE = struct.Struct(f"<16s{MAX_NDIM}Q")  # dtype code, shape (adjacent)
_HOLDER_PIDS = struct.Struct(f"<{MAX_HOLDERS}q")
assert _OFF["ndim"] == 4 and _OFF["generation"] == 8
assert _OFF["nbytes"] == _OFF["pending"] + 8 and _OFF["commit_ns"] == _OFF["nbytes"] + 8
assert _OFF["shape"] == _OFF["dtype"] + 16 and _OFF["writer_start"] == _OFF["writer_pid"] + 8
_O_PENDING, _O_NBYTES, _O_WPID = _OFF["pending"], _OFF["nbytes"], _OFF["writer_pid"]
_O_DTYPE, _O_HPID, _O_HSTART, _O_HCOUNT = _OFF["dtype"], _OFF["holder_pid"], _OFF["holder_start"], _OFF["holder_count"]
_ZERO_SHAPE = (0,) * MAX_NDIM


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


_CODE_OF: dict = {}  # dtype (or anything np.dtype accepts and that hashes) -> dtype code
_DTYPE_OF: dict[str, np.dtype] = {}  # dtype code -> numpy dtype
_CODE_FROM_RAW: dict[bytes, str] = {}  # the 16 raw bytes of a slot's dtype field -> code


def _dtype_code(dtype) -> str:
    try:
        return _CODE_OF[dtype]
    except (KeyError, TypeError):
        pass
    npd = np.dtype(dtype)
    if npd.hasobject or npd.fields is not None or npd.subdtype is not None or npd.kind not in "biufc":
        raise PayloadError(
            f"unsupported dtype {npd}: slots hold plain bool, integer, float or complex arrays"
        )
    try:
        _CODE_OF[dtype] = npd.str
    except TypeError:  # unhashable spelling of a dtype: fine, just not cached
        pass
    return npd.str


def _np_dtype(code: str) -> np.dtype:
    try:
        return _DTYPE_OF[code]
    except KeyError:
        npd = _DTYPE_OF[code] = np.dtype("<u2") if code == BF16 else np.dtype(code)
        return npd


def _code_from_raw(raw: bytes) -> str:
    try:
        return _CODE_FROM_RAW[raw]
    except KeyError:
        code = _CODE_FROM_RAW[raw] = raw.rstrip(b"\0").decode()
        return code


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

    __slots__ = ("pool", "slot", "generation", "_described", "_done")

    def __init__(self, pool: "SlotPool", slot: int, generation: int):
        self.pool = pool
        self.slot = slot
        self.generation = generation
        self._described = False
        self._done = False

    def _describe(self, code: str, shape: tuple[int, ...], nbytes: int | None = None) -> np.dtype:
        """Check the payload against the pool and record dtype, shape and size in the slot."""
        pool = self.pool
        npd = _np_dtype(code)
        ndim = len(shape)
        if ndim > MAX_NDIM:
            raise PayloadError(f"channel {pool.name!r}: {ndim} dimensions, at most {MAX_NDIM} are supported")
        if nbytes is None:
            if any(d < 0 for d in shape):
                raise PayloadError(f"channel {pool.name!r}: negative dimension in shape {shape}")
            nbytes = math.prod(shape) * npd.itemsize
        if pool.dtype_constraint is not None and code != pool.dtype_constraint:
            raise PayloadError(
                f"channel {pool.name!r} carries dtype {pool.dtype_constraint}, got {code}"
            )
        if nbytes > pool.slot_bytes:
            raise PayloadError(
                f"payload of {nbytes} bytes (shape {tuple(shape)}, dtype {code}) does not fit a slot of "
                f"channel {pool.name!r} ({pool.slot_bytes} bytes)"
            )
        mm = pool._seg.mm
        base = pool._table + self.slot * _SLOT_BYTES
        _DTYPE_SHAPE.pack_into(mm, base + _O_DTYPE, code.encode(), *shape, *_ZERO_SHAPE[ndim:])
        _U32.pack_into(mm, base + 4, ndim)
        _U64.pack_into(mm, base + _O_NBYTES, nbytes)
        self._described = True
        return npd

    def array(self, shape, dtype) -> np.ndarray:
        """A writable numpy view of the slot with this shape and dtype, to produce data in place."""
        shape = tuple(int(d) for d in shape) if isinstance(shape, (tuple, list)) else (int(shape),)
        code = BF16 if dtype == BF16 else _dtype_code(dtype)
        npd = self._describe(code, shape)
        return np.ndarray(shape, dtype=npd, buffer=self.pool._seg.mm, offset=self.pool._slot_offset(self.slot))

    def tensor(self, shape, dtype):
        """A writable CPU torch tensor over the slot with this shape and torch dtype (bf16
        included), for a producer that computes straight into shared memory (`out=`)."""
        import torch

        shape = tuple(int(d) for d in shape)
        if dtype == torch.bfloat16:
            return torch.from_numpy(self.array(shape, BF16)).view(torch.bfloat16)
        return torch.from_numpy(self.array(shape, torch.empty(0, dtype=dtype).numpy().dtype))

    def write(self, data) -> None:
        """Copy a numpy array or torch tensor (CPU, or CUDA: one device-to-host copy) into the slot:
        a single copy straight into the shared mapping, no intermediate buffer."""
        pool = self.pool
        off = pool._data_offset + self.slot * pool._stride
        mm = pool._seg.mm
        if type(data) is not np.ndarray and _is_torch(data):
            import torch

            code, npd = _torch_code_and_numpy(data)
            shape = tuple(data.shape)
            self._describe(code, shape)
            dst = torch.from_numpy(np.ndarray(shape, dtype=npd, buffer=mm, offset=off))
            if code == BF16:
                dst = dst.view(torch.bfloat16)
            dst.copy_(data.detach())
            return
        src = data if type(data) is np.ndarray else np.asarray(data)
        self._describe(_dtype_code(src.dtype), src.shape, src.nbytes)
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


_SLOT_BYTES = SLOT_DTYPE.itemsize


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
        self._table = HEADER_BYTES
        self._data_offset = HEADER_BYTES + table_bytes
        # Structured views for introspection and recovery (not on the per-message path).
        self._slots = np.ndarray((self.n_slots,), dtype=SLOT_DTYPE, buffer=seg.mm, offset=HEADER_BYTES)
        sl = self._slots
        self._f_state, self._f_gen, self._f_pending = sl["state"], sl["generation"], sl["pending"]
        self._f_commit = sl["commit_ns"]
        self._f_wpid, self._f_wstart = sl["writer_pid"], sl["writer_start"]
        self._f_hpid, self._f_hstart, self._f_hcount = sl["holder_pid"], sl["holder_start"], sl["holder_count"]
        # written, read, dropped, released: adjacent u64 counters of the header.
        self._ctr = HEADER_DTYPE.fields["written"][1]
        # Views handed to readers come from a read-only export: read-only from birth, cheaper
        # than clearing the writeable flag on every read.
        self._ro = memoryview(seg.mm).toreadonly()
        self._producer_pid = 0
        # slot -> (dtype code, shape, torch view) of its last read_torch: a phone's screenshots
        # share one size, so the view over a slot is usually wanted again as it was, and a
        # dict hit saves the ~25 us its cold numpy and torch construction took.
        self._torch_views: dict[int, tuple] = {}
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
        self._slots = None
        self._torch_views.clear()
        for k in [k for k in vars(self) if k.startswith("_f_")]:
            setattr(self, k, None)
        if self._ro is not None:
            try:
                self._ro.release()
            except BufferError:
                pass  # readers still hold views: the mapping stays until they go (see Segment.close)
            self._ro = None
        self._seg.close()

    def unlink(self) -> None:
        self._seg.unlink()

    def data_region(self) -> tuple[int, int]:
        """(address, length) of the slots' payload bytes in this process's mapping: what a
        consumer page-locks for DMA (cudaHostRegister). The address is valid until close()."""
        import ctypes

        head = ctypes.c_char.from_buffer(self._seg.mm, self._data_offset)
        try:
            return ctypes.addressof(head), self.n_slots * self._stride
        finally:
            del head   # no buffer export may outlive this call (close() unmaps)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _slot_offset(self, slot: int) -> int:
        return self._data_offset + slot * self._stride

    def _bump(self, k: int, n: int = 1) -> None:
        """counter k (0 written, 1 read, 2 dropped, 3 released) += n; caller holds the lock."""
        off = self._ctr + 8 * k
        mm = self._seg.mm
        _U64.pack_into(mm, off, _U64.unpack_from(mm, off)[0] + n)

    # --- producer side ------------------------------------------------------------------
    def try_acquire(self) -> WriteLoan | None:
        pid, start = _proc.self_identity()
        seg = self._seg
        mm = seg.mm
        with seg:
            # Lowest free index: the slot just released is reused while still in the CPU
            # caches (round-robin over 4 x 4 MiB slots measured ~40% slower per put).
            try:
                i = self._f_state.tolist().index(FREE)
            except ValueError:
                return None
            base = self._table + i * _SLOT_BYTES
            gen = _U64.unpack_from(mm, base + 8)[0] + 1
            # Writer identity first, state last: whoever sees WRITING also sees who writes.
            _WRITER.pack_into(mm, base + _O_WPID, pid, start)
            _I64.pack_into(mm, base + _O_PENDING, 0)
            _U64.pack_into(mm, base + 8, gen)
            _U32.pack_into(mm, base, WRITING)
            if self._producer_pid != pid:  # record the producer once, not on every acquire
                h = seg.header
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
        mm = self._seg.mm
        base = self._table + i * _SLOT_BYTES
        with self._seg:
            state, _, gen = _STATE_NDIM_GEN.unpack_from(mm, base)
            if gen != loan.generation or state != WRITING:
                raise StaleSlotError(
                    f"slot {i} of channel {self.name!r} was reclaimed while being written "
                    f"(loan generation {loan.generation}, slot now at {gen})"
                )
            _I64.pack_into(mm, base + _O_PENDING, readers)
            _U64.pack_into(mm, base + _O_NBYTES + 8, time.monotonic_ns())  # commit_ns
            _U32.pack_into(mm, base, READY)  # last: the slot is published by this store
            self._bump(0)
        loan._done = True
        return SlotRef(self.name, i, gen)

    def _abort(self, loan: WriteLoan) -> None:
        i = loan.slot
        mm = self._seg.mm
        base = self._table + i * _SLOT_BYTES
        with self._seg:
            state, _, gen = _STATE_NDIM_GEN.unpack_from(mm, base)
            if gen == loan.generation and state == WRITING:
                _U32.pack_into(mm, base, FREE)
        loan._done = True

    # --- consumer side ------------------------------------------------------------------
    def _check(self, ref: SlotRef, i: int, base: int) -> int:
        """Raise StaleSlotError unless slot i is READY at the ref's generation; returns ndim.
        Caller holds the lock."""
        if ref.channel != self.name:
            raise StaleSlotError(f"ref for channel {ref.channel!r} used on channel {self.name!r}")
        state, ndim, gen = _STATE_NDIM_GEN.unpack_from(self._seg.mm, base)
        if gen != ref.generation:
            raise StaleSlotError(
                f"slot {ref.slot} of channel {self.name!r} was reused: ref generation "
                f"{ref.generation}, slot now at generation {gen}"
            )
        if state != READY:
            raise StaleSlotError(
                f"slot {ref.slot} of channel {self.name!r} (generation {gen}) is "
                f"{STATE_NAMES.get(state, '?')}, not ready: released already or never committed"
            )
        return ndim

    def _slot_index(self, ref: SlotRef) -> int:
        i = ref.slot
        if type(i) is not int:
            i = int(i)
        if not 0 <= i < self.n_slots:
            raise StaleSlotError(f"slot {ref.slot} out of range for channel {self.name!r} ({self.n_slots} slots)")
        return i

    def _hold(self, ref: SlotRef) -> tuple[str, tuple[int, ...]]:
        """Register this process as a holder of the slot; returns its (dtype code, shape)."""
        i = self._slot_index(ref)
        pid, start = _proc.self_identity()
        mm = self._seg.mm
        base = self._table + i * _SLOT_BYTES
        with self._seg:
            ndim = self._check(ref, i, base)
            pids = _HOLDER_PIDS.unpack_from(mm, base + _O_HPID)
            if pid in pids:
                off = base + _O_HCOUNT + 8 * pids.index(pid)
                _I64.pack_into(mm, off, _I64.unpack_from(mm, off)[0] + 1)
            else:
                if 0 not in pids:
                    raise TooManyConsumersError(
                        f"slot {i} of channel {self.name!r} is held by {MAX_HOLDERS} processes already"
                    )
                j = 8 * pids.index(0)
                _I64.pack_into(mm, base + _O_HPID + j, pid)
                _U64.pack_into(mm, base + _O_HSTART + j, start)
                _I64.pack_into(mm, base + _O_HCOUNT + j, 1)
            self._bump(1)
            desc = _DTYPE_SHAPE.unpack_from(mm, base + _O_DTYPE)
        return _code_from_raw(desc[0]), desc[1 : 1 + ndim]

    def read(self, ref: SlotRef, *, dtype=None, shape=None) -> np.ndarray:
        """Zero-copy read-only numpy view of the slot's tensor; the caller holds the slot until
        release(ref). bf16 payloads come back as their raw uint16 bits (use read_torch).
        `dtype`/`shape`, when given, are checked against what the producer wrote."""
        code, shp = self._hold(ref)
        if dtype is not None or shape is not None:
            try:
                self._expect(ref, code, shp, dtype, shape)
            except PayloadError:
                self._unhold(ref)  # undo the hold; the share stays for a correct read
                raise
        return np.ndarray(shp, dtype=_np_dtype(code), buffer=self._ro, offset=self._data_offset + ref.slot * self._stride)

    def read_torch(self, ref: SlotRef, *, dtype=None, shape=None):
        """Zero-copy CPU torch tensor over the slot (torch imported only here). The tensor is
        technically writable (torch has no read-only tensors); consumers must not write it."""
        code, shp = self._hold(ref)
        if dtype is not None or shape is not None:
            try:
                self._expect(ref, code, shp, dtype, shape)
            except PayloadError:
                self._unhold(ref)
                raise
        cached = self._torch_views.get(ref.slot)
        if cached is not None and cached[0] == code and cached[1] == shp:
            return cached[2]
        import torch

        arr = np.ndarray(shp, dtype=_np_dtype(code), buffer=self._seg.mm, offset=self._slot_offset(ref.slot))
        t = torch.from_numpy(arr)
        if code == BF16:
            t = t.view(torch.bfloat16)
        self._torch_views[ref.slot] = (code, shp, t)
        return t

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
        mm = self._seg.mm
        base = self._table + i * _SLOT_BYTES
        with self._seg:
            self._check(ref, i, base)
            pids = _HOLDER_PIDS.unpack_from(mm, base + _O_HPID)
            if pid in pids:
                j = 8 * pids.index(pid)
                left = _I64.unpack_from(mm, base + _O_HCOUNT + j)[0] - 1
                if left > 0:
                    _I64.pack_into(mm, base + _O_HCOUNT + j, left)
                else:
                    _I64.pack_into(mm, base + _O_HPID + j, 0)
                    _U64.pack_into(mm, base + _O_HSTART + j, 0)
                    _I64.pack_into(mm, base + _O_HCOUNT + j, 0)
            if share:
                _I64.pack_into(mm, base + _O_PENDING, _I64.unpack_from(mm, base + _O_PENDING)[0] - 1)
                self._bump(3)
            self._maybe_free(i)

    def _maybe_free(self, i: int) -> bool:
        """Free slot i if every share was released and nobody holds it; caller holds the lock."""
        mm = self._seg.mm
        base = self._table + i * _SLOT_BYTES
        if _I64.unpack_from(mm, base + _O_PENDING)[0] <= 0 and not any(_HOLDER_PIDS.unpack_from(mm, base + _O_HPID)):
            _U32.pack_into(mm, base, FREE)
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
                self._bump(2, freed)
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
