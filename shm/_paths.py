"""Where segments live: <root>/autoglm-<instance>/<channel>.<kind>.

The root is /dev/shm unless AUTOGLM_SHM_ROOT says otherwise (tests point it at a private dir).
"""
from __future__ import annotations

import os
import re

from .errors import InvalidNameError

DEFAULT_ROOT = "/dev/shm"
ROOT_ENV = "AUTOGLM_SHM_ROOT"
DIR_PREFIX = "autoglm-"
OWNER_FILE = "instance.json"
POOL_SUFFIX = ".pool"
RING_SUFFIX = ".ring"
BELL_SUFFIX = ".bell"
WAKE_SUFFIX = ".wake-"  # + consumer-table index: a ring reader's wake-up FIFO
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Linux sockaddr_un.sun_path is 108 bytes including the NUL.
_MAX_IPC_PATH = 107


def shm_root(root: str | os.PathLike | None = None) -> str:
    if root is not None:
        return os.fspath(root)
    return os.environ.get(ROOT_ENV) or DEFAULT_ROOT


def validate_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidNameError(
            f"invalid {what} {name!r}: use 1-64 characters from [A-Za-z0-9_-]"
        )
    return name


def instance_dir(instance: str, root: str | os.PathLike | None = None) -> str:
    validate_name(instance, "instance name")
    return os.path.join(shm_root(root), DIR_PREFIX + instance)


def channel_path(instance: str, channel: str, suffix: str, root=None) -> str:
    validate_name(channel, "channel name")
    return os.path.join(instance_dir(instance, root), channel + suffix)


def ipc_endpoint(path: str) -> str:
    if len(path.encode()) > _MAX_IPC_PATH:
        raise InvalidNameError(
            f"doorbell socket path {path!r} is {len(path.encode())} bytes, over the "
            f"{_MAX_IPC_PATH}-byte limit of unix sockets: use a shorter root, instance or channel name"
        )
    return "ipc://" + path
