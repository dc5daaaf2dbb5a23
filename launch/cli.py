"""The `autoglm` command.

Each command group lives next to the code it drives, in a module exposing
``register(subparsers)``; that function adds its parsers and sets ``func`` on each.
Modules here must stay cheap to import: heavy imports (torch, transformers) go inside
the command handlers, so `autoglm --help` answers at once. A handler reports a problem
with the user's input by raising ``SystemExit("autoglm GROUP: <what is wrong>")``: one
line on stderr, exit status 1, no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Module paths of the command groups, in the order `autoglm --help` lists them.
COMMAND_MODULES = [
    "modelcore.cli",
    "shm.cli",
    "benchmarks.cli",
    "launch.launch_cli",
    "launch.node_cli",
    "launch.topic_cli",
    "launch.param_cli",
    "execution.cli",
    "execution.phone.cli",
    "profiler.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoglm",
        description="AutoGLM-Phone-9B pipeline: launch it, inspect it, measure it, run the phone agent on it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()   # a reader gone shows here, not in the interpreter's exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`autoglm topic list | head -1`): stop quietly, as cat does.
        # stdout is pointed at /dev/null so that the interpreter's final flush of the
        # unwritten rest does not raise again on the way out.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141      # 128 + SIGPIPE, what a shell reports for a process the pipe ended


if __name__ == "__main__":
    sys.exit(main())
