"""The recording file: spans saved by `autoglm profile --record FILE`, replayed with `--input`.

JSON lines, chosen over msgpack because a recording is something people grep, diff, cut with
`head` and attach to bug reports; a line per span also means a profiler killed mid-run leaves
a readable file (every line written is complete and flushed in batches).

    {"autoglm_trace": 1, "clock": "CLOCK_MONOTONIC", "instance": "...", "boot_id": "...", ...}
    {"request_id": "r1", "name": "vision.encode", "source": "vision", "pid": 123,
     "start_ns": 1, "end_ns": 2, "attrs": {...}}
    ...

The header's ``boot_id`` says which boot the monotonic timestamps belong to (they restart at
every boot, so two recordings are comparable only when their boot ids agree).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Iterable

from .spans import Span, expand_batch

FORMAT_KEY = "autoglm_trace"
FORMAT_VERSION = 1


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def make_header(instance: str = "", **extra) -> dict:
    return {FORMAT_KEY: FORMAT_VERSION, "clock": "CLOCK_MONOTONIC", "instance": instance,
            "host": socket.gethostname(), "boot_id": boot_id(),
            "recorded_at_unix": time.time(), "recorded_at_mono_ns": time.monotonic_ns(), **extra}


class RecordingWriter:
    """Appends spans to a recording file; ``close()`` (or ``with``) flushes."""

    def __init__(self, path: str | os.PathLike, instance: str = "", **header_extra) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            raise FileNotFoundError(f"cannot record to {self.path}: directory "
                                    f"{self.path.parent} does not exist")
        self._f = open(self.path, "w", encoding="utf-8")
        self._f.write(json.dumps(make_header(instance, **header_extra)) + "\n")
        self._f.flush()   # a recording with no spans yet is still one
        self.count = 0

    def write(self, span: Span) -> None:
        self._f.write(json.dumps(span.to_json_obj(), separators=(",", ":"),
                                 ensure_ascii=False) + "\n")
        self.count += 1
        if self.count % 256 == 0:
            self._f.flush()

    def write_many(self, spans: Iterable[Span]) -> None:
        for s in spans:
            self.write(s)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_recording(path: str | os.PathLike, spans: Iterable[Span], instance: str = "") -> int:
    with RecordingWriter(path, instance) as w:
        w.write_many(spans)
        return w.count


def read_recording(path: str | os.PathLike) -> tuple[dict, list[Span]]:
    """(header, spans). A file that is not a recording, or a bad line, raises ValueError
    naming the file and line; a last line cut short (a recorder killed while it wrote) is
    left out, as ``header["cut_short_line"]`` says."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no recording at {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    spans: list[Span] = []
    with open(path, encoding="utf-8") as f:
        first = f.readline()
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        if not isinstance(header, dict) or FORMAT_KEY not in header:
            raise ValueError(f"{path}: not an autoglm trace recording (the first line must be "
                             f"a JSON header with \"{FORMAT_KEY}\")")
        if header[FORMAT_KEY] != FORMAT_VERSION:
            raise ValueError(f"{path}: recording format version {header[FORMAT_KEY]!r}, "
                             f"this profiler reads version {FORMAT_VERSION}")
        for lineno, line in enumerate(f, start=2):
            if not line.strip():
                continue
            try:
                spans.extend(expand_batch(Span.from_json_obj(json.loads(line))))
            except ValueError as e:
                if not line.endswith("\n") and not f.read(1):   # the last line, unfinished
                    header["cut_short_line"] = lineno
                    break
                raise ValueError(f"{path}:{lineno}: {e}") from None
    return header, spans
