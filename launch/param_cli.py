"""`autoglm param set NAME VALUE` and `autoglm param list`: run-time config values of a pipeline.

A value goes out on the DDS config topic; every stage answers on the config answer topic,
which `set` waits for: applied (the stage has a parameter of that name: `trace.enabled` for all,
plus its compute's `config_params`), refused (a value of the wrong type: the stage names the
type it expects, and keeps its value) or ignored (not its parameter: it names its own).
`set` fails, exit 1 and one line, when a stage refused the value or no stage has the name.
The launcher keeps the value alive, so a stage that restarts later gets it too; a value that
no stage applied is replaced there by the one kept before, or withdrawn when there was none.
"""
from __future__ import annotations

import json
import sys
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
    ls = sub.add_parser("list", help="the values set so far, as the launcher keeps them for "
                                     "stages that restart")
    for q in (st, ls):
        add_instance_arg(q)
        q.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_set)
    ls.set_defaults(func=_list)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


# How long a fresh participant listens for the instance's kept values (states, config):
# they arrive once discovery matched the writers, a few hundred ms on a busy host.
DISCOVERY_S = 1.5


def _listen(reader, seconds: float, *others) -> list:
    """What `reader` (and `others`, whose samples go to their lists) receive in `seconds`."""
    out, extra, deadline = [], [[] for _ in others], time.monotonic() + seconds
    while time.monotonic() < deadline:
        out.extend(reader.take(0.1))
        for r, got in zip(others, extra):
            got.extend(r.take(0))
    return [out, *extra] if others else out


def parse_value(text: str):
    """JSON when it parses, else the text itself (so `param set log.level debug` works)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _answers(answers, rid: str, live: set, timeout: float) -> dict[str, str]:
    """Each stage's answer to config value `rid` (runtime.stage: applied / refused: ... /
    ignored: ...)."""
    got: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while set(got) < live and time.monotonic() < deadline:
        for a in answers.take(0.1):
            if a.request_id == rid:
                got[a.source] = a.outcome
    return got


def _restore(plane, config_reader, writer, previous) -> bool:
    """Put the value kept before back, under its own request id (stages that applied it skip
    it; a restarted one applies it), so that the launcher, which keeps the last value of
    each name for restarts, does not keep one every stage refused; wait until it has."""
    from control.messages import ConfigValue

    writer.write(ConfigValue(name=previous.name, request_id=previous.request_id,
                             value_json=previous.value_json))
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        for cfg in config_reader.take(0.1):
            if cfg.request_id == previous.request_id and cfg.source != plane.node_name:
                return True
    return False


def withdraw(writer, name: str) -> bool:
    """Take back a value that had none before it (one no stage applied, or one set for a
    while), so that the launcher keeps nothing under its name (restarts would get it, `param
    list` would show it); True once the launcher (every matched reader) has it."""
    from control.messages import CONFIG_WITHDRAWN, ConfigValue

    writer.write(ConfigValue(name=name, request_id=f"withdraw-{time.monotonic_ns():x}",
                             value_json=CONFIG_WITHDRAWN))
    return writer.wait_for_acks(3.0)


def _set(args) -> int:
    from control import topics as t
    from control.messages import CONFIG_WITHDRAWN, ConfigValue, StageStates
    from control.plane import ControlPlane
    from runtime.stage import CONFIG_APPLIED, CONFIG_IGNORED, CONFIG_KNOWN, CONFIG_REFUSED

    check_instance(args.instance, "param")
    name = args.name.strip()
    if not name:
        raise SystemExit("autoglm param: NAME must not be empty")
    if args.timeout <= 0:
        raise SystemExit("autoglm param: --timeout must be > 0 seconds")
    value = parse_value(args.value)
    value_json = json.dumps(value)
    with ControlPlane(args.instance, "param-cli") as plane:
        states = plane.reader(t.STAGE_STATE)
        config = plane.reader(t.CONFIG)
        answers = plane.reader(t.CONFIG_ANSWER)
        seen, kept = _listen(states, DISCOVERY_S, config)
        live = {s.stage for s in seen if s.state != StageStates.DEAD}
        if not live:
            raise SystemExit(f"autoglm param: no live stage in instance {args.instance!r} "
                             f"(is `autoglm launch --instance {args.instance}` running?)")
        answers.wait_for_writers(len(live), timeout=args.timeout)   # a stream: no history
        previous = next((c for c in reversed(kept)
                         if c.name == name and c.value_json != CONFIG_WITHDRAWN), None)
        rid = f"param-{time.monotonic_ns():x}"
        writer = plane.writer(t.CONFIG)
        writer.write(ConfigValue(name=name, request_id=rid, value_json=value_json))
        outcomes = _answers(answers, rid, live, args.timeout)
        applied = sorted(st for st, a in outcomes.items() if a.startswith(CONFIG_APPLIED))
        refused = {st: a[len(CONFIG_REFUSED):] for st, a in outcomes.items()
                   if a.startswith(CONFIG_REFUSED)}
        ignored = sorted(st for st, a in outcomes.items() if a.startswith(CONFIG_IGNORED))
        known = sorted({n.strip() for st in ignored for n in outcomes[st].partition(
            CONFIG_KNOWN)[2].rstrip(")").split(",") if n.strip()})
        restored = False
        if not applied and previous is not None:
            restored = _restore(plane, config, writer, previous)
        elif not applied:
            withdraw(writer, name)
    missing = sorted(live - set(outcomes))
    if args.json:
        print(json.dumps({"name": name, "value": value, "applied": applied, "refused": refused,
                          "ignored": ignored, "known": known, "missing": missing,
                          "restored": json.loads(previous.value_json) if restored else None}))
    shown = f"{name} = {value_json}"
    if refused:
        by_reason: dict[str, list[str]] = {}
        for st, reason in sorted(refused.items()):
            by_reason.setdefault(reason, []).append(st)
        msg = f"autoglm param: {shown} refused by " + "; by ".join(
            f"{', '.join(sts)}: {reason}" for reason, sts in by_reason.items())
        if applied:
            msg += f" (applied by {', '.join(applied)})"
    elif not applied and ignored and not missing:
        msg = (f"autoglm param: no stage has a parameter {name!r} "
               f"(known: {', '.join(known) or 'none'})")
    else:
        msg = None
    if msg and restored:
        msg += f"; {name} stays {previous.value_json}"
    if msg:
        if not args.json:
            print(msg, file=sys.stderr)
        return 1
    if not args.json:
        print(f"{shown}: applied by {', '.join(applied) or 'no stage'}"
              + (f"; no answer from {', '.join(missing)} within {args.timeout:g} s" if missing else ""))
    return 1 if missing or not applied else 0


def _list(args) -> int:
    from control import topics as t
    from control.messages import CONFIG_WITHDRAWN
    from control.plane import ControlPlane

    check_instance(args.instance, "param")
    with ControlPlane(args.instance, "param-cli") as plane:
        # The launcher re-publishes every value it keeps, so it is the source of all of them:
        # who set a value first is not known here.
        values = {cfg.name: cfg.value_json for cfg in _listen(plane.reader(t.CONFIG), DISCOVERY_S)}
    values = {k: v for k, v in values.items() if v != CONFIG_WITHDRAWN}
    if args.json:
        print(json.dumps({k: json.loads(v) for k, v in sorted(values.items())}))
    elif not values:
        print(f"no config values set in instance {args.instance!r}")
    else:
        for k, v in sorted(values.items()):
            print(f"{k} = {v}")
    return 0
