"""Instance: the directory of one pipeline instance and its lifetime.

The creator owns the directory (its pid and process start time are in instance.json) and
removes it on normal exit, SIGTERM and SIGINT. A later create() of the same name finds a
directory whose owner is dead and reclaims it; one whose owner lives raises InstanceBusyError.

Signal cleanup runs in a Python handler, and Python runs handlers in the main thread only. A
process-directed signal may be delivered to any thread that does not block it (numpy's
OpenBLAS workers do not), and then it does not interrupt a blocking call of the main thread:
cleanup happens when the main thread next runs Python code. Main loops should therefore block
in bounded slices (as the stage loops and RingReader.read do), not in one long sleep.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass

from . import _proc
from ._paths import _NAME_RE, DIR_PREFIX, OWNER_FILE, instance_dir, shm_root, validate_name
from .errors import InstanceBusyError, InstanceNotFoundError


@dataclass(frozen=True)
class Owner:
    pid: int
    start: int
    created: float

    @property
    def alive(self) -> bool:
        return _proc.is_alive(self.pid, self.start)


def read_owner(path: str) -> Owner | None:
    try:
        with open(os.path.join(path, OWNER_FILE)) as f:
            d = json.load(f)
        return Owner(int(d["pid"]), int(d.get("start", 0)), float(d.get("created", 0)))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def instance_names(root=None) -> list[str]:
    r = shm_root(root)
    try:
        entries = os.listdir(r)
    except FileNotFoundError:
        return []
    names = []
    for e in entries:
        name = e[len(DIR_PREFIX):]
        if e.startswith(DIR_PREFIX) and _NAME_RE.match(name) and os.path.isdir(os.path.join(r, e)):
            names.append(name)
    return sorted(names)


def remove_instance(name: str, *, root=None, force: bool = False) -> bool:
    """Remove an instance directory. Refuses (InstanceBusyError) while its owner is alive
    unless force. Returns False if there was nothing to remove."""
    path = instance_dir(name, root)
    if not os.path.isdir(path):
        return False
    owner = read_owner(path)
    if owner is not None and owner.alive and not force:
        raise InstanceBusyError(f"shm instance {name!r} is owned by live process {owner.pid}")
    shutil.rmtree(path, ignore_errors=True)
    return True


class Instance:
    def __init__(self, name: str, path: str, root, owned: bool):
        self.name = name
        self.path = path
        self.root = root
        self.owned = owned
        self.reclaimed_previous = False
        self._closed = False
        self._prev_handlers: dict[int, object] = {}
        self._lock = threading.Lock()

    @classmethod
    def create(cls, name: str, *, root=None, handle_signals: bool = True) -> "Instance":
        """Create <root>/autoglm-<name>/ (mode 0700), reclaiming a crashed previous owner's."""
        validate_name(name, "instance name")
        path = instance_dir(name, root)
        os.makedirs(shm_root(root), exist_ok=True)
        reclaimed = False
        if os.path.isdir(path):
            owner = read_owner(path)
            if owner is not None and owner.alive:
                raise InstanceBusyError(
                    f"shm instance {name!r} is in use by live process {owner.pid} ({path}); "
                    f"stop it, or pick another instance name"
                )
            if owner is None and time.time() - os.stat(path).st_mtime < 5:
                # No owner file yet: maybe a creator is between mkdir and writing it.
                raise InstanceBusyError(f"shm instance {name!r} is being created by another process ({path})")
            shutil.rmtree(path, ignore_errors=True)
            reclaimed = True
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
        pid, start = _proc.self_identity()
        tmp = os.path.join(path, f".{OWNER_FILE}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"name": name, "pid": pid, "start": start, "created": time.time()}, f)
        os.rename(tmp, os.path.join(path, OWNER_FILE))
        inst = cls(name, path, root, owned=True)
        inst.reclaimed_previous = reclaimed
        atexit.register(inst.close)
        if handle_signals:
            inst._install_signal_handlers()
        return inst

    @classmethod
    def open(cls, name: str, *, root=None) -> "Instance":
        """An existing instance, not owned: close() leaves it in place."""
        path = instance_dir(name, root)
        if not os.path.isdir(path):
            raise InstanceNotFoundError(f"shm instance {name!r} does not exist ({path})")
        return cls(name, path, root, owned=False)

    @property
    def owner(self) -> Owner | None:
        return read_owner(self.path)

    # Channels are created through the classes; these are shortcuts bound to this instance.
    def create_pool(self, name: str, slot_bytes: int, n_slots: int, **kw):
        from .pool import SlotPool

        return SlotPool.create(self.name, name, slot_bytes, n_slots, root=self.root, **kw)

    def create_ring(self, name: str, record_dtype, capacity: int):
        from .ring import Ring

        return Ring.create(self.name, name, record_dtype, capacity, root=self.root)

    def close(self) -> None:
        """Remove the directory and everything in it (only in the owning process)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        self._restore_signal_handlers()
        owner = read_owner(self.path)
        if self.owned and owner is not None and owner.pid == os.getpid():
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- signals ------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; atexit still covers normal exit
        for sig in (signal.SIGTERM, signal.SIGINT):
            prev = signal.getsignal(sig)
            if prev is signal.SIG_IGN:
                continue  # the process chose to survive this signal: so do its segments
            self._prev_handlers[sig] = prev
            signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, prev in self._prev_handlers.items():
            # Only undo our own handler; if someone chained on top of it, leave theirs.
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, prev)

    def _on_signal(self, signum, frame) -> None:
        prev = self._prev_handlers.get(signum, signal.SIG_DFL)
        self.close()
        if callable(prev):
            prev(signum, frame)  # e.g. Python's default SIGINT handler raises KeyboardInterrupt
        else:
            # SIG_DFL (or None): die of the same signal, as the process would have without us.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
