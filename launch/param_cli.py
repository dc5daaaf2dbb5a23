"""`autoglm param set NAME VALUE` and `autoglm param list`: run-time config values of a pipeline.

A value goes out on the DDS config topic; every stage applies it (`on_config`, and
`trace.enabled` for all) and says so on its state topic, which `set` waits for. The launcher
keeps the value alive, so a stage that restarts later gets it too.
"""
from __future__ import annotations

import json
import time

from .instance_name import add_instance_arg, check_instance


def register(subparsers) -> None:
    p = subparsers.add_parser("param", help="run-time config values of a running pipeline",
                              description=__doc__,
                              formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="param_command", metavar="SUBCOMMAND")
    st = sub.add_parser("set", help="set NAME to VALUE in every stage and wait for them to apply it")
    st.add_argument("name", help="config name, e.g. trace.enabled")
    st.add_argument("value", help="a JSON value (true, 3, 0.5, \"text\", [1, 2]); a bare word is a string")
    st.add_argument("--timeout", type=float, default=5.0,
                    help="seconds to wait for the stages to apply it (default 5)")
    ls = sub.add_parser("list", help="the values set so far and who set them")
    for q in (st, ls):
        add_instance_arg(q)
        q.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_set)
    ls.set_defaults(func=_list)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


# How long a fresh participant listens for the instance's kept values (states, config):
# they arrive once discovery matched the writers, a few hundred ms on a busy host.
DISCOVERY_S = 1.5


def _listen(reader, seconds: float) -> list:
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        out.extend(reader.take(0.1))
    return out


def parse_value(text: str):
    """JSON when it parses, else the text itself (so `param set log.level debug` works)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _set(args) -> int:
    from control import topics as t
    from control.messages import ConfigValue, StageStates
    from control.plane import ControlPlane

    check_instance(args.instance, "param")
    name = args.name.strip()
    if not name:
        raise SystemExit("autoglm param: NAME must not be empty")
    if args.timeout <= 0:
        raise SystemExit("autoglm param: --timeout must be > 0 seconds")
    value = parse_value(args.value)
    with ControlPlane(args.instance, "param-cli") as plane:
        states = plane.reader(t.STAGE_STATE)
        live = {s.stage for s in _listen(states, DISCOVERY_S) if s.state != StageStates.DEAD}
        if not live:
            raise SystemExit(f"autoglm param: no live stage in instance {args.instance!r} "
                             f"(is `autoglm launch --instance {args.instance}` running?)")
        rid = f"param-{time.monotonic_ns():x}"
        plane.writer(t.CONFIG).write(ConfigValue(name=name, request_id=rid,
                                                 value_json=json.dumps(value)))
        applied: set[str] = set()
        deadline = time.monotonic() + args.timeout
        while applied < live and time.monotonic() < deadline:
            for s in states.take(0.1):
                if s.request_id == rid and s.source == s.stage:
                    applied.add(s.stage)
    missing = sorted(live - applied)
    if args.json:
        print(json.dumps({"name": name, "value": value, "applied": sorted(applied),
                          "missing": missing}))
    else:
        print(f"{name} = {json.dumps(value)}: applied by {', '.join(sorted(applied)) or 'no stage'}"
              + (f"; no answer from {', '.join(missing)} within {args.timeout:g} s" if missing else ""))
    return 1 if missing else 0


def _list(args) -> int:
    from control import topics as t
    from control.plane import ControlPlane

    check_instance(args.instance, "param")
    with ControlPlane(args.instance, "param-cli") as plane:
        values = {cfg.name: (cfg.value_json, cfg.source)
                  for cfg in _listen(plane.reader(t.CONFIG), DISCOVERY_S)}
    if args.json:
        print(json.dumps({k: json.loads(v) for k, (v, _) in sorted(values.items())}))
    elif not values:
        print(f"no config values set in instance {args.instance!r}")
    else:
        for k, (v, src) in sorted(values.items()):
            print(f"{k} = {v}   ({src})")
    return 0
