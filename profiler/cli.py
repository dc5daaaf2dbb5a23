"""`autoglm profile`: per-stage and per-hop latency of a live pipeline or a recording.

    autoglm profile --instance NAME                 live tables, refreshed every second
    autoglm profile --instance NAME --duration 30 --record spans.jsonl --out trace.json
    autoglm profile --input spans.jsonl --request chatcmpl-...   where one request's time went
    autoglm profile --measure-cost                  what emitting a span costs a stage
"""
from __future__ import annotations

import json
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "profile", help="latency per stage and per hop, live or from a recording",
        description="Reads the trace spans of a running pipeline (--instance, as a passive "
                    "best-effort observer) or of a recording (--input) and shows count and "
                    "p50/p90/p99/max latency per stage and per hop between stages.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--instance", help="attach to this running pipeline instance "
                                        "(default 'default', as the other tools)")
    src.add_argument("--input", metavar="FILE", help="read a recording made with --record")
    p.add_argument("--domain-id", type=int, default=None,
                   help="DDS domain id when the instance runs on an explicit one")
    p.add_argument("--duration", type=float, default=None,
                   help="live: stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--refresh", type=float, default=None,
                   help="live: seconds between redraws (default: 1)")
    p.add_argument("--request", metavar="ID",
                   help="show where this request's time went (live: waits for its response)")
    p.add_argument("--out", metavar="TRACE.json", help="write a Chrome/Perfetto trace file")
    p.add_argument("--record", metavar="FILE", help="save the spans (JSON lines) for --input")
    p.add_argument("--percentiles", default="50,90,99",
                   help="comma-separated percentiles (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the final tables as JSON")
    p.add_argument("--measure-cost", nargs="?", const=5000, type=int, metavar="N",
                   help="measure span emission cost (N spans, default 5000) with and "
                        "without a profiler attached, and bundled as the stages emit, then "
                        "exit; with --instance and "
                        "--base-url also the decode speed of that live pipeline with its "
                        "spans off, on, and on with a profiler attached (alternated rounds)")
    p.add_argument("--base-url", default=None,
                   help="--measure-cost --instance: the pipeline's HTTP API root, e.g. "
                        "http://127.0.0.1:8000")
    p.add_argument("--cost-rounds", type=int, default=None,
                   help="--measure-cost --instance: blocks of three rounds, spans off / on / "
                        "on with a profiler attached (default: 3)")
    p.set_defaults(func=_run)


def _percentiles(text: str) -> tuple[float, ...]:
    try:
        qs = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"autoglm profile: --percentiles must be numbers like 50,90,99, "
                         f"got {text!r}") from None
    if not qs:
        raise SystemExit("autoglm profile: --percentiles is empty")
    for q in qs:   # as `bench serve` takes them
        if not 0 < q <= 100:
            raise SystemExit(f"autoglm profile: --percentiles: {q:g} is not in (0, 100]")
    return qs


def _refuse_unused(args) -> None:
    """Options that would be ignored by the mode asked for are refused, naming them."""
    live_only = [name for name, given in (
        ("--duration", args.duration is not None), ("--refresh", args.refresh is not None),
        ("--domain-id", args.domain_id is not None)) if given]
    if args.input and live_only:
        raise SystemExit(f"autoglm profile: {', '.join(live_only)} is for a live pipeline, "
                         "not --input (a recording)")
    if args.measure_cost is not None:
        others = [name for name, given in (
            ("--input", args.input), ("--request", args.request), ("--out", args.out),
            ("--record", args.record), ("--duration", args.duration is not None)) if given]
        if others:
            raise SystemExit(f"autoglm profile: --measure-cost takes none of {', '.join(others)}")
    elif args.base_url or args.cost_rounds is not None:
        raise SystemExit("autoglm profile: --base-url and --cost-rounds are for "
                         "--measure-cost --instance")


def _run(args) -> int:
    _refuse_unused(args)
    args.refresh = 1.0 if args.refresh is None else args.refresh
    args.cost_rounds = 3 if args.cost_rounds is None else args.cost_rounds
    if args.measure_cost is not None:
        from .cost import format_cost, measure_emission_cost

        if args.measure_cost < 10:
            raise SystemExit("autoglm profile: --measure-cost needs at least 10 spans")
        cost = measure_emission_cost(args.measure_cost)
        if args.instance:
            from .cost import format_decode_cost, measure_decode_cost

            if not args.base_url:
                raise SystemExit("autoglm profile: --measure-cost --instance needs --base-url "
                                 "(the pipeline's HTTP API, e.g. http://127.0.0.1:8000)")
            if args.cost_rounds < 1:
                raise SystemExit("autoglm profile: --cost-rounds must be at least 1")
            try:
                cost["decode_loop"] = measure_decode_cost(
                    args.instance, args.base_url, rounds=args.cost_rounds,
                    domain_id=args.domain_id)
            except RuntimeError as e:
                raise SystemExit(f"autoglm profile: {e}") from None
        if args.json:
            print(json.dumps(cost, indent=2))
        else:
            print(format_cost(cost))
            if "decode_loop" in cost:
                print(format_decode_cost(cost["decode_loop"]))
        return 0
    if not args.instance and not args.input:
        from launch.instance_name import DEFAULT_INSTANCE

        args.instance = DEFAULT_INSTANCE
    qs = _percentiles(args.percentiles)
    if args.refresh <= 0:
        raise SystemExit("autoglm profile: --refresh must be positive")
    if args.duration is not None and args.duration <= 0:
        raise SystemExit("autoglm profile: --duration must be positive")
    if args.input:
        from .recording import read_recording, write_recording

        try:
            header, spans = read_recording(args.input)
        except (OSError, ValueError) as e:
            raise SystemExit(f"autoglm profile: {e}") from None
        if "cut_short_line" in header:
            print(f"autoglm profile: {args.input}:{header['cut_short_line']}: the last line was "
                  "cut short (a recorder stopped while writing it); left out", file=sys.stderr)
        if args.record:
            try:
                write_recording(args.record, spans, header.get("instance", ""))
            except OSError as e:
                raise SystemExit(f"autoglm profile: {e}") from None
    else:
        spans = _live(args, qs)
        if not spans:
            return 1
    return _final(args, spans, qs)


def _live(args, qs) -> list:
    from launch.instance_name import check_instance, instance_running

    from .collect import SpanCollector
    from .recording import RecordingWriter
    from .spans import GATEWAY_RESPONSE_SENT

    check_instance(args.instance, "profile")    # the names `autoglm launch` takes
    stop_on_sigterm()   # as Ctrl-C: the tables, the trace file and the recording still come
    running = instance_running(args.instance)
    recorder = None
    if args.record:
        try:
            recorder = RecordingWriter(args.record, args.instance)
        except OSError as e:
            raise SystemExit(f"autoglm profile: {e}") from None
    tty = sys.stdout.isatty()
    deadline = None if args.duration is None else time.monotonic() + args.duration
    collector = SpanCollector(args.instance, domain_id=args.domain_id,
                              on_span=recorder.write if recorder else None)
    state = "attached to" if running else \
        "no pipeline runs here yet (`autoglm shm ls` lists them); waiting for"
    print(f"{state} instance {args.instance!r} (domain {collector.plane.domain_id}); "
          f"reading {'' if args.duration is None else f'for {args.duration:g} s '}"
          "— Ctrl-C to stop", file=sys.stderr)
    try:
        while deadline is None or time.monotonic() < deadline:
            wait = args.refresh if deadline is None else min(args.refresh,
                                                              max(0.0, deadline - time.monotonic()))
            if args.request:
                done = collector.wait_for(lambda ss: any(
                    s.request_id == args.request and s.name == GATEWAY_RESPONSE_SENT
                    for s in ss), wait)
                if done:
                    time.sleep(0.2)  # stragglers of the same request
                    break
            else:
                time.sleep(wait)
            if tty and not args.json:
                sys.stdout.write(_screen(args.instance, collector.spans(), qs, live=True))
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        spans = collector.spans()
        collector.close()
        if recorder is not None:
            recorder.close()
            print(f"recorded {recorder.count} spans to {args.record}", file=sys.stderr)
    if not spans:
        print(f"autoglm profile: no spans came from instance {args.instance!r}: is it launched "
              "(`autoglm shm ls`), with tracing on (`autoglm param list`)?", file=sys.stderr)
    return spans


def stop_on_sigterm() -> None:
    """SIGTERM (a `timeout`, a service manager) ends a live run as Ctrl-C does."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _screen(title: str, spans, qs, live: bool) -> str:
    from .stats import hop_table, stage_table
    from .view import CLEAR, latency_table

    head = f"autoglm profile — {title} — {len(spans)} spans, " \
           f"{len({s.request_id for s in spans})} requests (latencies in ms)\n\n"
    body = latency_table("stage span", stage_table(spans, qs), qs) + "\n\n" + \
        latency_table("hop", hop_table(spans, qs), qs) + "\n"
    return (CLEAR if live else "") + head + body


def _final(args, spans, qs) -> int:
    from .stats import DEFAULT_PERCENTILES, hop_table, overhead_report, request_breakdown, \
        stage_table
    from .view import breakdown_table, overhead_lines

    mine = [s for s in spans if s.request_id == args.request] if args.request else None
    if args.request and not mine:
        raise SystemExit(f"autoglm profile: no spans of request {args.request!r} "
                         f"({len(spans)} spans read)")
    if args.out:
        from .perfetto import write_trace

        try:
            n = write_trace(args.out, spans)
        except OSError as e:
            raise SystemExit(f"autoglm profile: cannot write {args.out}: {e}") from None
        print(f"wrote {n} spans to {args.out} (open in https://ui.perfetto.dev)", file=sys.stderr)
    # The overhead lines say p50 and p99 whatever the tables show.
    overhead_qs = sorted({*DEFAULT_PERCENTILES, *qs})
    if args.json:
        doc = {"spans": len(spans),
               "stages": {k: v.to_json_obj() for k, v in stage_table(spans, qs).items()},
               "hops": {k: v.to_json_obj() for k, v in hop_table(spans, qs).items()},
               "overhead": overhead_report(spans, overhead_qs)}
        if mine is not None:
            doc["request"] = {"id": args.request, "spans": request_breakdown(mine)}
        print(json.dumps(doc, indent=2))
        return 0
    title = args.input or args.instance
    if mine is not None:
        print(breakdown_table(args.request, request_breakdown(mine)))
        return 0
    print(_screen(title, spans, qs, live=False))
    print(overhead_lines(overhead_report(spans, overhead_qs)))
    return 0
