"""`autoglm topic list|info|echo|hz|bw`, in the manner of `ros2 topic`, over every DDS topic and
every shm channel ("shm/NAME") of an instance. The tools are passive: DDS observers that never
back-pressure a writer, and read-only mappings of shm channels that never take a slot."""
from __future__ import annotations

import json
import sys

from .instance_name import add_instance_arg, check_instance, instance_running


def register(subparsers) -> None:
    p = subparsers.add_parser("topic", help="DDS topics and shm channels: list, info, echo, hz, bw",
                              description="Inspect a running pipeline's topics, ROS 2 style.")
    sub = p.add_subparsers(dest="topic_command", metavar="SUBCOMMAND")
    ls = sub.add_parser("list", help="every DDS topic and shm channel with type and endpoints")
    ls.add_argument("-v", "--verbose", action="store_true", help="name the publishers and subscribers")
    info = sub.add_parser("info", help="type, QoS, publishers and subscribers, counters")
    echo = sub.add_parser("echo", help="print messages (shm: header, shape, dtype, statistics)")
    echo.add_argument("-n", "--count", type=int, help="stop after this many messages")
    echo.add_argument("--timeout", type=float, help="stop after this many seconds")
    hz = sub.add_parser("hz", help="message rate over a window (shm: from the producer's counters)")
    bw = sub.add_parser("bw", help="bandwidth over a window (shm: from the producer's counters)")
    for q in (info, echo, hz, bw):
        q.add_argument("name", help="topic (e.g. request, autoglm/event) or shm channel (shm/frames)")
    for q in (hz, bw):
        q.add_argument("--window", type=float, default=2.0, help="seconds to measure (default 2)")
    for q in (ls, info, echo, hz, bw):
        add_instance_arg(q)
        q.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_list)
    info.set_defaults(func=_info)
    echo.set_defaults(func=_echo)
    hz.set_defaults(func=_hz)
    bw.set_defaults(func=_bw)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _fail(e) -> SystemExit:
    return SystemExit(f"autoglm topic: {e}")


def _instance(args) -> str:
    """The instance, checked; a note on stderr where no pipeline of that name runs here (the
    DDS topics are still listed, with no endpoints, as the type registry knows them)."""
    name = check_instance(args.instance, "topic")
    if not instance_running(name):
        print(f"autoglm topic: no pipeline instance {name!r} is running here (is it launched? "
              "`autoglm shm ls` lists them)", file=sys.stderr)
    return name


def _list(args) -> int:
    from .inspect_topics import list_topics

    rows = list_topics(_instance(args))
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    print(f"{'TOPIC':<28} {'TYPE':<36} {'PUB':>4} {'SUB':>4}")
    for r in rows:
        print(f"{r.name:<28} {r.type:<36} {len(r.publishers):>4} {len(r.subscribers):>4}")
        if args.verbose:
            print(f"    publishers:  {', '.join(r.publishers) or '-'}")
            print(f"    subscribers: {', '.join(r.subscribers) or '-'}")
    return 0


def _info(args) -> int:
    from .inspect_topics import topic_info

    try:
        d = topic_info(_instance(args), args.name)
    except ValueError as e:
        raise _fail(e) from None
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    for k, v in d.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            print(f"{k}: {len(v)}")
            for x in v:
                print("  - " + ", ".join(f"{a}={b}" for a, b in x.items()))
        else:
            print(f"{k}: {v}")
    return 0


def _echo(args) -> int:
    from .inspect_topics import echo

    if args.count is not None and args.count <= 0:
        raise _fail("--count must be > 0")
    if args.timeout is not None and args.timeout <= 0:
        raise _fail("--timeout must be > 0 seconds")

    def emit(d):
        if args.json:
            print(json.dumps(d), flush=True)
        else:
            print("\n".join(f"{k}: {v}" for k, v in d.items()) + "\n---", flush=True)

    try:
        echo(_instance(args), args.name, count=args.count,
             timeout=args.timeout, emit=emit)
    except ValueError as e:
        raise _fail(e) from None
    return 0


def _measure(args):
    from .inspect_topics import measure

    if args.window <= 0:
        raise _fail("--window must be > 0 seconds")
    try:
        return measure(_instance(args), args.name, args.window)
    except ValueError as e:
        raise _fail(e) from None


def _hz(args) -> int:
    m = _measure(args)
    if args.json:
        print(json.dumps(m))
    else:
        extra = ""
        if "min_gap_s" in m:
            extra = (f"  from the gaps {m['gap_rate_hz']:.2f} Hz, min gap "
                     f"{m['min_gap_s'] * 1e3:.2f} ms, max gap {m['max_gap_s'] * 1e3:.2f} ms")
        print(f"{m['name']}: average rate {m['rate_hz']:.2f} Hz over {m['window_s']} s "
              f"({m['messages']} messages){extra}  [{m['source']}]")
    return 0


def _bw(args) -> int:
    m = _measure(args)
    if args.json:
        print(json.dumps(m))
    else:
        print(f"{m['name']}: {_rate(m['bytes_per_s'])} over {m['window_s']} s "
              f"({m['messages']} messages, mean {m['mean_bytes']:.0f} B)  [{m['source']}]")
    return 0


def _rate(bps: float) -> str:
    for unit in ("B/s", "KiB/s", "MiB/s", "GiB/s"):
        if bps < 1024 or unit == "GiB/s":
            return f"{bps:.2f} {unit}"
        bps /= 1024
    return f"{bps:.2f}"
