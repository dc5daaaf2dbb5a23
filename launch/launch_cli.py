"""`autoglm launch [SPEC]`: start the whole pipeline from a launch spec."""
from __future__ import annotations

from .instance_name import add_instance_arg, check_instance


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "launch", help="start the pipeline (stages pinned to cores, supervised)",
        description="Create the shm channels, start every stage of the launch spec as its own "
                    "process pinned to its cores, supervise them (heartbeats, restarts), and "
                    "stop everything cleanly on Ctrl-C or SIGTERM.")
    p.add_argument("spec", nargs="?", help="launch spec (TOML); default: launch/specs/default.toml")
    add_instance_arg(p)
    p.add_argument("--check", action="store_true", help="validate the spec, print the plan, start nothing")
    p.set_defaults(func=_launch)


def _launch(args) -> int:
    from shm.errors import InstanceBusyError

    from .launcher import launch
    from .spec import DEFAULT_SPEC, SpecError, format_cores, load_spec

    instance = check_instance(args.instance, "launch")
    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        raise SystemExit(f"autoglm launch: {e}") from None
    if args.check:
        print(f"{spec.path}: OK")
        for st in spec.stages.values():
            shared = f" (shared with {', '.join(st.shares_cores_with)})" if st.shares_cores_with else ""
            print(f"  {st.name:<10} cores {format_cores(st.cores)}{shared}  module {st.module}")
        return 0
    try:
        return launch(args.spec or str(DEFAULT_SPEC), instance)
    except InstanceBusyError as e:
        raise SystemExit(f"autoglm launch: {e}") from None
