"""The instance name every tool takes (`--instance`, default "default")."""
from __future__ import annotations

DEFAULT_INSTANCE = "default"


def check_instance(name: str, group: str) -> str:
    """Valid for both planes (shm: [A-Za-z0-9_-]; DDS partition: also '.'), else SystemExit."""
    from control.naming import validate_instance
    from shm._paths import validate_name

    try:
        validate_name(name, "instance name")
        validate_instance(name)
    except ValueError as e:
        raise SystemExit(f"autoglm {group}: {e}") from None
    return name


def instance_running(name: str) -> bool:
    """Whether a pipeline of this instance runs on this machine (its launcher is alive)."""
    from shm._paths import instance_dir
    from shm.instance import read_owner

    owner = read_owner(instance_dir(name))
    return owner is not None and owner.alive


def add_instance_arg(parser) -> None:
    parser.add_argument("--instance", default=DEFAULT_INSTANCE,
                        help=f"pipeline instance name (default {DEFAULT_INSTANCE!r})")
