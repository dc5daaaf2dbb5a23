"""`autoglm shm ls` and `autoglm shm clean`: list and reclaim shared-memory instances."""
from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("shm", help="list and clean shared-memory channels",
                              description="Shared-memory instances under /dev/shm (or $AUTOGLM_SHM_ROOT).")
    sub = p.add_subparsers(dest="shm_command", metavar="SUBCOMMAND")
    ls = sub.add_parser("ls", help="instances, channels, sizes, owner pid and counters")
    ls.add_argument("instance", nargs="?", help="only this instance")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_ls)
    clean = sub.add_parser("clean", help="remove instances whose owner is dead")
    clean.add_argument("instance", nargs="?", help="the instance to remove")
    clean.add_argument("--all", action="store_true", help="every instance whose owner is dead")
    clean.add_argument("--force", action="store_true", help="also remove instances whose owner is alive")
    clean.set_defaults(func=_clean)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ls(args) -> int:
    from shm import InvalidNameError, list_instances

    try:
        infos = list_instances()
    except InvalidNameError as e:
        raise SystemExit(f"autoglm shm: {e}")
    if args.instance:
        infos = [i for i in infos if i.name == args.instance]
        if not infos:
            raise SystemExit(f"autoglm shm: no instance {args.instance!r}")
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 0
    if not infos:
        print("no autoglm shm instances")
        return 0
    for inst in infos:
        state = "alive" if inst.owner_alive else f"DEAD (reclaim with `autoglm shm clean {inst.name}`)"
        print(f"instance {inst.name}  owner pid {inst.owner_pid} {state}  {inst.path}")
        if not inst.channels:
            print("  (no channels)")
            continue
        print(f"  {'channel':<20} {'kind':<5} {'item':>10} {'count':>6} {'size':>10} {'producer':>14} "
              f"{'written':>9} {'read':>9} {'dropped':>8}  extra")
        for c in inst.channels:
            prod = f"{c.producer_pid} {'up' if c.producer_alive else 'dead'}" if c.producer_pid else "-"
            extra = f"in use {c.in_use}/{c.count}" if c.kind == "pool" else f"{len(c.consumers)} consumers"
            if c.kind == "ring" and c.consumers:
                extra += " (lag " + ",".join(str(x["lag"]) for x in c.consumers) + ")"
            print(f"  {c.name:<20} {c.kind:<5} {_size(c.item_bytes):>10} {c.count:>6} {_size(c.file_bytes):>10} "
                  f"{prod:>14} {c.written:>9} {c.read:>9} {c.dropped:>8}  {extra}")
    return 0


def _clean(args) -> int:
    from shm import InstanceBusyError, InvalidNameError, instance_names, remove_instance
    from shm.instance import read_owner
    from shm._paths import instance_dir

    if bool(args.instance) == bool(args.all):
        raise SystemExit("autoglm shm: give either an INSTANCE or --all")
    try:
        names = instance_names() if args.all else [args.instance]
        removed, refused = [], []
        for name in names:
            if args.all and not args.force:
                owner = read_owner(instance_dir(name))
                if owner is not None and owner.alive:
                    refused.append((name, owner.pid))
                    continue
            try:
                if remove_instance(name, force=args.force):
                    removed.append(name)
                elif not args.all:
                    raise SystemExit(f"autoglm shm: no instance {name!r}")
            except InstanceBusyError as e:
                raise SystemExit(f"autoglm shm: {e}; use --force to remove it anyway")
    except InvalidNameError as e:
        raise SystemExit(f"autoglm shm: {e}")
    for name in removed:
        print(f"removed {name}")
    for name, pid in refused:
        print(f"kept {name}: owner pid {pid} is alive (use --force)")
    if not removed and not refused:
        print("nothing to clean")
    return 0
