"""Every `autoglm` command and subcommand prints its help: argparse formats help strings
lazily (a stray "%" only fails when someone asks for --help), so each one is rendered here."""
from __future__ import annotations

import argparse

from launch.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, path=("autoglm",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_command_formats_its_help():
    seen = []
    for path, parser in _parsers(build_parser()):
        text = parser.format_help()
        assert text.startswith("usage: " + " ".join(path)), path
        seen.append(" ".join(path[1:]))
    # The groups of the product are all there (a group that failed to register would vanish).
    for command in ("launch", "node list", "node info", "topic echo", "topic hz", "shm clean",
                    "bench ipc", "bench serve", "profile", "gateway", "make-checkpoint"):
        assert command in seen, command
