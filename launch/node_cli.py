"""`autoglm node list` and `autoglm node info NAME`: the stages of a running pipeline."""
from __future__ import annotations

import json

from .instance_name import add_instance_arg, check_instance

MAX_HELD_SHOWN = 8   # request ids `node info` prints of a stage's in-flight board


def register(subparsers) -> None:
    p = subparsers.add_parser("node", help="stages of a running pipeline: state, pid, cores, heartbeat",
                              description="Joins the instance's DDS domain as a passive reader.")
    sub = p.add_subparsers(dest="node_command", metavar="SUBCOMMAND")
    ls = sub.add_parser("list", help="every stage: name, pid, state, cores, heartbeat age, restarts, CPU%%, RSS")
    info = sub.add_parser("info", help="one stage in detail: its topics, the requests it holds")
    info.add_argument("name", help="stage name")
    for q in (ls, info):
        add_instance_arg(q)
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.add_argument("--window", type=float, default=1.2,
                       help="seconds to listen for heartbeats (default 1.2)")
    ls.set_defaults(func=_list)
    info.set_defaults(func=_info)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _rows(args, endpoints=False):
    from .inspect_nodes import collect_nodes

    check_instance(args.instance, "node")
    if args.window <= 0:
        raise SystemExit("autoglm node: --window must be > 0 seconds")
    return collect_nodes(args.instance, window_s=args.window, endpoints=endpoints)


def _fmt_age(a):
    return "-" if a is None else f"{a:.1f}s"


def _fmt_mib(b):
    return "-" if b is None else f"{b / 2**20:.0f}MiB"


def _list(args) -> int:
    rows = _rows(args)
    if args.json:
        # The list skips DDS discovery (a second or more): topics are `node info`'s.
        print(json.dumps([{k: v for k, v in r.as_dict().items()
                           if k not in ("publishes", "subscribes")} for r in rows], indent=2))
        return 0
    if not rows:
        print(f"no stages in instance {args.instance!r} (is it launched?)")
        return 1
    print(f"{'NAME':<12} {'PID':>7} {'STATE':<9} {'CORES':<7} {'HB AGE':>7} {'RESTARTS':>8} "
          f"{'CPU%':>6} {'RSS':>8}")
    for r in rows:
        cpu = "-" if r.cpu_percent is None else f"{r.cpu_percent:.1f}"
        print(f"{r.name:<12} {r.pid:>7} {r.state:<9} {r.cores:<7} {_fmt_age(r.heartbeat_age_s):>7} "
              f"{r.restarts:>8} {cpu:>6} {_fmt_mib(r.rss_bytes):>8}")
    return 0


def _info(args) -> int:
    rows = [r for r in _rows(args, endpoints=True) if r.name == args.name]
    if not rows:
        raise SystemExit(f"autoglm node: no stage {args.name!r} in instance {args.instance!r}")
    r = rows[0]
    from shm.inflight import read_board
    holding = read_board(args.instance, r.name) if r.alive else []  # the stage's board
    if args.json:
        print(json.dumps({**r.as_dict(), "holding": holding}, indent=2))
        return 0
    cpu = "-" if r.cpu_percent is None else f"{r.cpu_percent:.1f}%"
    print(f"node {r.name} (instance {args.instance})")
    print(f"  pid            {r.pid} ({'alive' if r.alive else 'not running'})")
    print(f"  state          {r.state}" + (f"  ({r.detail})" if r.detail else ""))
    print(f"  cores          {r.cores} (read back from the OS; announced {r.cores_announced or '-'})")
    print(f"  heartbeat age  {_fmt_age(r.heartbeat_age_s)}")
    print(f"  in flight      {'-' if r.in_flight is None else r.in_flight}")
    shown = ", ".join(holding[:MAX_HELD_SHOWN]) + (
        f" (+{len(holding) - MAX_HELD_SHOWN} more)" if len(holding) > MAX_HELD_SHOWN else "")
    print(f"  holding        {shown or '-'}")
    print(f"  restarts       {r.restarts}")
    print(f"  cpu            {cpu}")
    print(f"  rss            {_fmt_mib(r.rss_bytes)}")
    print(f"  publishes      {', '.join(r.publishes) or '-'}")
    print(f"  subscribes     {', '.join(r.subscribes) or '-'}")
    return 0
