"""A stage's in-flight requests, on a board in shared memory: <instance dir>/<stage>.inflight.

The stage writes a request's id into a free entry when it takes the request and clears the
entry when it lets go of it; no other process reads the board while the stage lives. When a
stage dies, the launcher reads its board and fails those requests (an `error` event naming the
stage). A `started` event per request on DDS did the same job, but it cost each request's
admission ~0.13 ms on the 2-core host (a DDS write, then a wake-up in every reader), on the
request's path, to serve a rare crash; a board entry is two stores into a mapping.

Layout: a 64-byte header (magic, capacity, entry size, writer pid), then `capacity` entries of
a little-endian u32 id length (0 = free) and the id's UTF-8 bytes. The length is stored after
the bytes, so a stage killed in the middle of an entry leaves it free, never half an id.
The file is created under a temporary name and renamed over its predecessor: a restarted
stage starts with an empty board, and a reader never sees a half-initialised one.
"""
from __future__ import annotations

import mmap
import os
import struct

from ._paths import channel_path

INFLIGHT_SUFFIX = ".inflight"
MAGIC = b"AGLMINF1"
_HEADER = struct.Struct("<8sIIq")          # magic, capacity, entry bytes, writer pid
HEADER_BYTES = 64
ENTRY_BYTES = 256
MAX_ID_BYTES = ENTRY_BYTES - 4             # request ids are at most 128 characters here
DEFAULT_CAPACITY = 2048                    # well above what one stage holds (64 running + queue)
_LEN = struct.Struct("<I")


def board_path(instance: str, stage: str, root=None) -> str:
    return channel_path(instance, stage, INFLIGHT_SUFFIX, root)


class InFlightBoard:
    """The stage's side: ``add`` when it takes a request, ``remove`` when it lets go.
    One process writes it; calls from several threads of that process are the caller's to
    serialise (the stage runtime holds its lock)."""

    def __init__(self, path: str, mm: mmap.mmap, capacity: int):
        self.path = path
        self._mm = mm
        self.capacity = capacity
        self._free = list(range(capacity - 1, -1, -1))   # lowest entries first
        self._entry: dict[str, int] = {}                  # request id -> entry index
        self.untracked = 0   # ids that found no entry (board full, id too long)

    @classmethod
    def create(cls, instance: str, stage: str, *, capacity: int = DEFAULT_CAPACITY,
               root=None) -> "InFlightBoard":
        path = board_path(instance, stage, root)
        size = HEADER_BYTES + capacity * ENTRY_BYTES
        tmp = f"{path}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)   # sparse: only the pages of used entries take memory
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        _HEADER.pack_into(mm, 0, MAGIC, capacity, ENTRY_BYTES, os.getpid())
        os.replace(tmp, path)
        return cls(path, mm, capacity)

    def add(self, request_id: str) -> bool:
        """Note the request; False (and counted in ``untracked``) when it cannot be."""
        if request_id in self._entry:
            return True
        data = request_id.encode()
        if not self._free or not data or len(data) > MAX_ID_BYTES:
            self.untracked += 1
            return False
        i = self._free.pop()
        off = HEADER_BYTES + i * ENTRY_BYTES
        self._mm[off + 4:off + 4 + len(data)] = data
        _LEN.pack_into(self._mm, off, len(data))      # last: the entry is now whole
        self._entry[request_id] = i
        return True

    def remove(self, request_id: str) -> None:
        i = self._entry.pop(request_id, None)
        if i is not None:
            _LEN.pack_into(self._mm, HEADER_BYTES + i * ENTRY_BYTES, 0)
            self._free.append(i)

    def __len__(self) -> int:
        return len(self._entry)

    def close(self, *, unlink: bool = False) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def board_writer_pid(instance: str, stage: str, root=None) -> int | None:
    """The pid of the process that created the stage's board (the stage's latest process),
    or None when it has none. For inspection tools, to name a channel's live endpoints."""
    try:
        with open(board_path(instance, stage, root), "rb") as f:
            data = f.read(_HEADER.size)
    except FileNotFoundError:
        return None
    if len(data) < _HEADER.size:
        return None
    magic, _, _, pid = _HEADER.unpack(data)
    return pid if magic == MAGIC and pid > 0 else None


def read_board(instance: str, stage: str, root=None) -> list[str]:
    """The request ids on a stage's board, in entry order; [] when it has none (never
    started, or already consumed). For the launcher after the stage died, and for
    inspection tools (a live stage's board may change while it is read)."""
    try:
        with open(board_path(instance, stage, root), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    if len(data) < HEADER_BYTES:
        return []
    magic, capacity, entry_bytes, _ = _HEADER.unpack_from(data, 0)
    if magic != MAGIC or entry_bytes < 8:
        return []
    ids = []
    for i in range(capacity):
        off = HEADER_BYTES + i * entry_bytes
        if off + entry_bytes > len(data):
            break
        n = _LEN.unpack_from(data, off)[0]
        if 0 < n <= entry_bytes - 4:
            ids.append(data[off + 4:off + 4 + n].decode(errors="replace"))
    return ids
