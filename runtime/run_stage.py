"""Entry point of a stage process (started by the launcher as a fresh interpreter):

    python -m runtime.run_stage --instance X --stage NAME --spec FILE [--cores 0,1]
                                [--parent-pid PID] [--restarts N]
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.run_stage")
    ap.add_argument("--instance", required=True)
    ap.add_argument("--stage", required=True)
    ap.add_argument("--spec", required=True, help="launch spec file (TOML)")
    ap.add_argument("--cores", help="cores to pin to, e.g. 0,1 (default: the spec's)")
    ap.add_argument("--spare-cores", help="cores no stage is pinned to, for worker threads "
                    "(the gateway's image decoding), e.g. 4-15 (default: none)")
    ap.add_argument("--parent-pid", type=int, help="die when this process is no longer the parent")
    ap.add_argument("--restarts", type=int, default=0, help="how many times it was restarted")
    args = ap.parse_args(argv)

    from .spec import SpecError, load_spec, parse_cores
    from .stage import StageRuntime

    try:
        spec = load_spec(args.spec)
        spec.stage(args.stage)
        cores = parse_cores(args.cores) if args.cores else None
        spare = parse_cores(args.spare_cores) if args.spare_cores else []
    except (SpecError, ValueError) as e:
        print(f"run_stage: {e}", file=sys.stderr)
        return 2
    return StageRuntime(args.instance, args.stage, spec, cores=cores, spare_cores=spare,
                        restarts=args.restarts, parent_pid=args.parent_pid).run()


if __name__ == "__main__":
    code = main()
    # The stage has closed what it owns (DDS, shm, its in-flight board); the interpreter's
    # finalization would only add Triton's nanobind "leaked instances" report, ~30 lines per
    # stage that imported it, to every stop of the pipeline.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
