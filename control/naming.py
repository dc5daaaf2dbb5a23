"""Instance names and how they isolate one pipeline from another on the same machine.

Two layers of isolation, both derived from the instance name:

* DDS domain id. Each instance gets its own domain, so two pipelines do not even discover
  each other's participants (no discovery chatter between them, `cyclonedds ps -i N` shows
  one pipeline). Domain ids are scarce: RTPS ports are 7400 + 250 * domain (+ offsets), so
  the protocol tops out at 232, and ids above 101 put the ports inside Linux's ephemeral
  range (32768-60999), where an unrelated socket may already hold them. We therefore hash
  the name into 1..101 (0 stays free: it is every DDS application's default).
* Partition "autoglm.<instance>" on every publisher and subscriber. With only 101 domains,
  two names can hash to the same id; the partition keeps their data apart anyway, and it is
  what the discovery tools filter on. The partition is the correctness guarantee, the
  domain id is the efficiency one.
"""
from __future__ import annotations

import hashlib
import re

DOMAIN_ID_MIN = 1
DOMAIN_ID_MAX = 101  # highest id whose ports stay below Linux's ephemeral port range
DOMAIN_ID_PROTOCOL_MAX = 232  # 7400 + 250 * 232 + offsets still fits in 65535

PARTITION_PREFIX = "autoglm."
# The launcher's node name: the source of the events it writes on behalf of stages that died.
LAUNCHER_NODE = "launcher"

# Letters, digits, '_', '-', '.': safe in a partition name (no DDS wildcards '*' / '?'),
# in file names and in shell commands.
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _validate_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"{kind} {name!r} is invalid: use 1-64 characters from "
                         "letters, digits, '_', '-', '.'")
    return name


def validate_instance(instance: str) -> str:
    """Return ``instance`` unchanged, or raise ValueError saying what is wrong with it."""
    return _validate_name("instance name", instance)


def validate_node_name(node_name: str) -> str:
    """Return ``node_name`` unchanged, or raise ValueError saying what is wrong with it."""
    return _validate_name("node name", node_name)


def domain_id_for(instance: str) -> int:
    """The DDS domain id of ``instance``: a stable hash of its name into 1..101."""
    validate_instance(instance)
    digest = hashlib.blake2b(instance.encode(), digest_size=8).digest()
    span = DOMAIN_ID_MAX - DOMAIN_ID_MIN + 1
    return DOMAIN_ID_MIN + int.from_bytes(digest, "big") % span


def validate_domain_id(domain_id: int) -> int:
    if not isinstance(domain_id, int) or not 0 <= domain_id <= DOMAIN_ID_PROTOCOL_MAX:
        raise ValueError(
            f"DDS domain id {domain_id!r} is out of range: RTPS ports limit it to "
            f"0..{DOMAIN_ID_PROTOCOL_MAX}"
        )
    return domain_id


def partition_for(instance: str) -> str:
    """The DDS partition every endpoint of ``instance`` uses."""
    return PARTITION_PREFIX + validate_instance(instance)
