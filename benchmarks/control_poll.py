"""Asking whether a stage's readers hold a message, as the decision stage does between two
engine steps (once per token): `ReaderSet.ready()`, which calls dds_waitset_wait directly and
says which readers hold something, and `take_ready()` of a watched set (control.arrival: a
thread sleeps in DDS, the loop reads an attribute), what the decision stage runs. Side by side
in one run. (Through cyclonedds' WaitSet wrapper the call had cost 26 us cold against 19 for
the direct one in the run of 2026-11-23, 7de449f; the wrapper is no longer used.)

    python -m benchmarks.control_poll [--rounds 400] [--out benchmarks/results/control-poll-cpu.json]

The reader set is the decision stage's: requests, stage events, cancels, config, commands,
all empty. "warm" repeats the call back to back; "cold" first streams 32 MiB through the
caches, as the stage's loop runs right after a model step. The two calls alternate, so the
host's drift falls on both alike. Medians in microseconds.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from control import topics as t
from control.plane import ControlPlane, ReaderSet

from . import write_result

_JUNK = np.ones(32 << 17)   # 32 MiB of float64


def run(rounds: int) -> dict:
    with ControlPlane(f"bench-poll-{os.getpid()}", "bench") as plane:
        readers = [plane.reader(spec) for spec in (t.REQUEST, t.STAGE_EVENT, t.CANCEL,
                                                    t.CONFIG, t.LIFECYCLE_COMMAND)]
        inbox = ReaderSet(plane, readers)
        watched = ReaderSet(plane, readers, watched=True)
        calls = {"ready()": lambda: bool(inbox.ready()),
                 "watched take_ready()": lambda: bool(watched.take_ready())}
        out = {}
        for cold in (False, True):
            got = {name: [] for name in calls}
            for _ in range(rounds):
                for name, fn in calls.items():
                    if cold:
                        _JUNK.sum()
                    t0 = time.perf_counter_ns()
                    assert fn() is False
                    got[name].append((time.perf_counter_ns() - t0) / 1e3)
            out["cold" if cold else "warm"] = {
                name: round(statistics.median(v[10:]), 2) for name, v in got.items()}
        watched.close()
        return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    res = {"command": "python -m benchmarks.control_poll --rounds %d" % args.rounds,
           "host": platform.node(), "unit": "us, median", "results": run(args.rounds)}
    for case, r in res["results"].items():
        print(f"{case}: " + "  ".join(f"{name} {us:.2f} us" for name, us in r.items()))
    write_result(args.out, res)


if __name__ == "__main__":
    main()
