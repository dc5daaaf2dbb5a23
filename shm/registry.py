"""Registry: what channels an instance has, read from their headers by any process.

Nothing is kept besides the channel files themselves: the registry lists them and reads the
live counters from each header, so it is never out of date and needs no writer.
"""
from __future__ import annotations

import ast
import mmap
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from . import _proc
from ._paths import POOL_SUFFIX, RING_SUFFIX, instance_dir
from ._segment import HEADER_BYTES, HEADER_DTYPE, KIND_NAMES, MAGIC
from .errors import InstanceNotFoundError
from .instance import instance_names, read_owner


@dataclass
class ChannelInfo:
    instance: str
    name: str
    kind: str  # "pool" or "ring"
    item_bytes: int  # pool: slot size; ring: record size
    count: int  # pool: slots; ring: capacity in records
    producer_pid: int
    producer_alive: bool
    creator_pid: int
    written: int
    read: int
    dropped: int
    file_bytes: int
    dtype: str = ""  # pool: dtype constraint if any; ring: record dtype
    in_use: int | None = None  # pool: slots not free
    consumers: list = field(default_factory=list)  # ring: live/dead consumer entries
    path: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class InstanceInfo:
    name: str
    path: str
    owner_pid: int | None
    owner_alive: bool
    channels: list[ChannelInfo]

    def as_dict(self) -> dict:
        d = asdict(self)
        return d


def _read_channel(instance: str, path: str) -> ChannelInfo | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size < HEADER_BYTES:
            return None
        mm = mmap.mmap(fd, HEADER_BYTES, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        h = np.frombuffer(mm, dtype=HEADER_DTYPE, count=1)[0].copy()
        info = None
        if h["magic"] == MAGIC:
            kind = KIND_NAMES.get(int(h["kind"]), "?")
            pid, start = int(h["producer_pid"]), int(h["producer_start"])
            info = ChannelInfo(
                instance=instance, name=h["name"].decode(), kind=kind,
                item_bytes=int(h["item_bytes"]), count=int(h["count"]),
                producer_pid=pid, producer_alive=_proc.is_alive(pid, start),
                creator_pid=int(h["creator_pid"]), written=int(h["written"]),
                read=int(h["read"]), dropped=int(h["dropped"]), file_bytes=size, path=path,
            )
            descr = h["dtype_descr"].decode()
            if kind == "ring" and descr:
                info.dtype = str(np.lib.format.descr_to_dtype(ast.literal_eval(descr)))
                _add_ring_consumers(info, mm)
            elif kind == "pool":
                info.dtype = descr
                _add_pool_usage(info, path)
        return info
    finally:
        del h
        mm.close()


def _add_ring_consumers(info: ChannelInfo, mm) -> None:
    from .ring import CONSUMER_DTYPE, CONSUMERS_OFFSET, MAX_CONSUMERS

    c = np.frombuffer(mm, dtype=CONSUMER_DTYPE, count=MAX_CONSUMERS, offset=CONSUMERS_OFFSET).copy()
    for e in c[c["pid"] != 0]:
        info.consumers.append({
            "pid": int(e["pid"]), "alive": _proc.is_alive(int(e["pid"]), int(e["start"])),
            "lag": info.written - int(e["cursor"]), "read": int(e["read"]), "lost": int(e["lost"]),
        })
        info.read += int(e["read"])
        info.dropped += int(e["lost"])


def _add_pool_usage(info: ChannelInfo, path: str) -> None:
    from .pool import FREE, SLOT_DTYPE

    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        table = np.frombuffer(f.read(info.count * SLOT_DTYPE.itemsize), dtype=SLOT_DTYPE)
    info.in_use = int((table["state"] != FREE).sum())


class Registry:
    """Channels of one instance, with live counters (re-read on every call)."""

    def __init__(self, instance: str, *, root=None):
        self.instance = instance
        self.root = root
        self.path = instance_dir(instance, root)

    def channels(self) -> list[ChannelInfo]:
        if not os.path.isdir(self.path):
            raise InstanceNotFoundError(f"shm instance {self.instance!r} does not exist ({self.path})")
        out = []
        for entry in sorted(os.listdir(self.path)):
            if entry.endswith((POOL_SUFFIX, RING_SUFFIX)):
                info = _read_channel(self.instance, os.path.join(self.path, entry))
                if info is not None:
                    out.append(info)
        return out

    def channel(self, name: str) -> ChannelInfo:
        for c in self.channels():
            if c.name == name:
                return c
        from .errors import ChannelNotFoundError

        raise ChannelNotFoundError(f"no channel {name!r} in shm instance {self.instance!r}")


def list_instances(root=None) -> list[InstanceInfo]:
    """Every autoglm instance under the root, with owner liveness and channels."""
    out = []
    for name in instance_names(root):
        path = instance_dir(name, root)
        owner = read_owner(path)
        try:
            chans = Registry(name, root=root).channels()
        except (InstanceNotFoundError, PermissionError):
            chans = []
        out.append(InstanceInfo(name, path, owner.pid if owner else None, bool(owner and owner.alive), chans))
    return out
