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
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
