"""One channel = one mmap'd file, with a common header page that any process can read.

The header holds what the registry shows (kind, sizes, producer pid, live counters). Files
are created under a temporary name with mode 0600 and renamed into place once initialised,
so an attaching process never sees a half-written header.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import threading
import time

import numpy as np

from ._paths import instance_dir
from .errors import ChannelExistsError, ChannelNotFoundError, InstanceNotFoundError, ShmError

MAGIC = b"AGLMSHM1"
VERSION = 1
KIND_POOL = 1
KIND_RING = 2
KIND_NAMES = {KIND_POOL: "pool", KIND_RING: "ring"}
HEADER_BYTES = 4096

# Counters are written by one process at a time (the producer, or any process under the
# channel lock), so plain stores suffice; readers see live values through the mapping.
HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u4"),
        ("kind", "<u4"),
        ("name", "S64"),
        ("creator_pid", "<i8"),
        ("producer_pid", "<i8"),
        ("producer_start", "<u8"),
        ("created_ns", "<u8"),
        ("written", "<u8"),
        ("read", "<u8"),
        ("dropped", "<u8"),
        ("released", "<u8"),
        ("item_bytes", "<u8"),  # pool: slot size; ring: record size
        ("count", "<u8"),  # pool: number of slots; ring: capacity in records
        ("head", "<u8"),  # ring: records ever written (next sequence number)
        ("dtype_descr", "S1024"),  # pool: optional dtype constraint; ring: record dtype
    ]
)
assert HEADER_DTYPE.itemsize <= HEADER_BYTES


def round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def require_instance_dir(instance: str, root=None) -> str:
    d = instance_dir(instance, root)
    if not os.path.isdir(d):
        raise InstanceNotFoundError(
            f"shm instance {instance!r} does not exist ({d}): create it with shm.Instance.create({instance!r})"
        )
    return d


class Segment:
    """An mmap'd channel file plus its header view and an inter-process lock.

    The lock is flock() on the file (released by the kernel when the holder dies, so a
    crashed process never leaves it held) combined with a thread lock (flock does not
    exclude threads sharing one descriptor).
    """

    def __init__(self, path: str, fd: int, mm: mmap.mmap):
        self.path = path
        self._fd = fd
        self.mm = mm
        self.header = np.ndarray((), dtype=HEADER_DTYPE, buffer=mm, offset=0)
        self._tlock = threading.RLock()
        self._depth = 0

    @classmethod
    def create(cls, path: str, size: int, kind: int, name: str, init) -> "Segment":
        if os.path.exists(path):
            raise ChannelExistsError(f"channel {name!r} already exists at {path}")
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # umask cannot widen it, but make the mode explicit
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            seg = cls(path, fd, mm)
            h = seg.header
            h["version"] = VERSION
            h["kind"] = kind
            h["name"] = name.encode()
            h["creator_pid"] = os.getpid()
            h["created_ns"] = time.time_ns()
            init(seg)
            h["magic"] = MAGIC
            try:
                os.link(tmp, path)  # fails if someone created it meanwhile: no silent overwrite
            except FileExistsError:
                raise ChannelExistsError(f"channel {name!r} already exists at {path}") from None
            seg.path = path
        except BaseException:
            os.close(fd)
            raise
        finally:
            os.unlink(tmp)
        return seg

    @classmethod
    def attach(cls, path: str, kind: int, name: str) -> "Segment":
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise ChannelNotFoundError(f"no {KIND_NAMES[kind]} channel {name!r} ({path} does not exist)") from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_BYTES:
                raise ShmError(f"{path} is not an autoglm channel (only {size} bytes)")
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        seg = cls(path, fd, mm)
        h = seg.header
        if h["magic"][()] != MAGIC or int(h["version"]) != VERSION:
            seg.close()
            raise ShmError(f"{path} is not an autoglm channel of version {VERSION}")
        if int(h["kind"]) != kind:
            got = KIND_NAMES.get(int(h["kind"]), "?")
            seg.close()
            raise ChannelNotFoundError(f"channel {name!r} is a {got}, not a {KIND_NAMES[kind]}")
        return seg

    def __enter__(self):
        self._tlock.acquire()
        if self._depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._tlock.release()

    def close(self) -> None:
        if self.mm is None:
            return
        self.header = None
        try:
            self.mm.close()
        except BufferError:
            # numpy views handed to the user still point into the mapping; leave it mapped
            # (it goes away with the last view) rather than invalidate their memory.
            pass
        self.mm = None
        os.close(self._fd)

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
