"""`autoglm bench ...`: the benchmarks behind every performance figure.

`bench ipc` is registered here. Other benchmarks (`bench decode`, `bench serve`, `bench audio`)
are added by appending their module to BENCH_MODULES; such a module exposes
``register_bench(bench_subparsers)`` which adds its parser and sets ``func``. Keep those
modules cheap to import (heavy imports inside the handler).
"""
from __future__ import annotations

import importlib

BENCH_MODULES: list[str] = ["benchmarks.audio", "benchmarks.decode", "benchmarks.serve"]


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run benchmarks", description="Benchmarks; results go to benchmarks/results/.")
    sub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    register_ipc(sub)
    for name in BENCH_MODULES:
        importlib.import_module(name).register_bench(sub)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def register_ipc(sub) -> None:
    # Importing the transport registry costs a numpy import (~0.1 s); it is what lets a
    # transport module add its own opt-in flag (e.g. --dds) without editing this file.
    from benchmarks import ipc

    transports = ipc.load_transports()
    p = sub.add_parser(
        "ipc", help="one-way latency and throughput between two processes, per transport",
        description="Latency (p50, p99) and throughput of shm vs pyzmq vs multiprocessing Pipe vs iceoryx2, "
                    "payloads 1 KiB..16 MiB. Prints a table and writes JSON.",
    )
    default_keys = [k for k, t in transports.items() if not t.opt_in_flag]
    p.add_argument("--transports", default=",".join(default_keys),
                   help=f"comma-separated subset of: {', '.join(transports)} (default: %(default)s)")
    for key, t in transports.items():
        if t.opt_in_flag:
            p.add_argument(f"--{t.opt_in_flag}", action="append_const", const=key, dest="opt_in",
                           help=f"also run {key}: {t.label}")
    p.add_argument("--sizes", default=None, help="comma-separated payload sizes, e.g. 1K,64K,1M,4M,16M (default: all five)")
    p.add_argument("--iters", type=int, default=300, help="latency samples for small payloads; fewer for large ones (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=20, help="latency samples discarded first (default: %(default)s)")
    p.add_argument("--throughput-mib", type=int, default=256, help="at most this many MiB per throughput cell (default: %(default)s)")
    p.add_argument("--window", type=int, default=2, help="unacknowledged messages allowed in the throughput run (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results/ipc-cpu.json", help="JSON result file (default: %(default)s)")
    p.add_argument("--no-json", action="store_true", help="print the table only")
    p.set_defaults(func=_run_ipc, opt_in=None)


def _parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1024, "M": 1024 * 1024, "G": 1024**3}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "KMG" else t
    try:
        n = int(float(num) * mult)
    except ValueError:
        raise SystemExit(f"autoglm bench: bad size {text!r} (use e.g. 64K, 4M)") from None
    if n <= 0:
        raise SystemExit(f"autoglm bench: size must be positive, got {text!r}")
    return n


def _run_ipc(args) -> int:
    import sys

    from benchmarks import ipc

    transports = ipc.load_transports()
    keys = [k.strip() for k in args.transports.split(",") if k.strip()] + list(args.opt_in or [])
    unknown = [k for k in keys if k not in transports]
    if unknown:
        raise SystemExit(f"autoglm bench: unknown transport(s) {', '.join(unknown)}; known: {', '.join(transports)}")
    if args.iters < 1 or args.window < 1 or args.warmup < 0:
        raise SystemExit("autoglm bench: --iters and --window must be >= 1, --warmup >= 0")
    plan = ipc.Plan(latency_iters=args.iters, warmup=args.warmup, throughput_bytes=args.throughput_mib * 1024 * 1024,
                    window=args.window)
    if args.sizes:
        plan.sizes = [_parse_size(s) for s in args.sizes.split(",") if s.strip()]
    machine = ipc.machine_info()
    print(f"machine: {machine['cpu']}, {machine['affinity_cpus']} cpus usable, load {machine['load_avg_at_start'][0]:.2f}, "
          f"single-thread memcpy {machine['memcpy_GBps_single_thread']} GB/s")
    result = ipc.run(list(dict.fromkeys(keys)), plan)
    print()
    print(ipc.format_table(result))
    if not args.no_json:
        ipc.write_json(result, args.out, sys.argv[1:] if sys.argv[0].endswith("autoglm") else _argv_after_cli(), plan, machine)
        print(f"\nwrote {args.out}")
    return 0


def _argv_after_cli() -> list[str]:
    import sys

    # `python -m launch.cli bench ipc ...`: argv[0] is the cli module path.
    return sys.argv[1:]
