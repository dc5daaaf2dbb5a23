"""The launch spec: a TOML file naming the stages, their cores/GPU/backend, the shm channels and
their sizes, the model directory and the HTTP endpoint.

`load_spec(path)` parses and validates; every problem is a `SpecError` whose message names the
file and the dotted field, e.g.
``spec.toml: stages.vision.cores: core 7 does not exist (this machine has cores 0-1)``.
The format is documented in launch/specs/default.toml.
"""
from __future__ import annotations

import importlib.util
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

# The spec format is owned by launch/ (docs in launch/specs/default.toml); it lives in runtime/
# because stage processes read it too and nothing may import launch/.
DEFAULT_SPEC = Path(__file__).resolve().parent.parent / "launch" / "specs" / "default.toml"
CHANNEL_KINDS = ("pool", "ring")
BACKENDS = ("torch", "onnxruntime", "numpy")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_GPU_RE = re.compile(r"^(none|cpu|cuda(:\d+)?)$")


class SpecError(ValueError):
    """A launch spec that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    kind: str             # "pool" (slot pool) or "ring" (record ring)
    slots: int            # pool: number of slots; ring: number of records it holds
    slot_bytes: int       # pool: bytes per slot; ring: bytes per record (from `record`)
    record: str = ""      # ring: record type name (runtime/records.py)


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str           # importable module exposing make_stage(ctx)
    cores: tuple[int, ...] | None   # None = "auto" until resolve_cores() runs
    gpu: str              # "none", "cpu", "cuda" or "cuda:N"
    backend: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict = field(default_factory=dict, hash=False, compare=False)
    shares_cores_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class LaunchSpec:
    path: str
    model_dir: str        # "" = the embedded default model
    http_host: str
    http_port: int
    heartbeat_s: float
    dead_after_s: float
    restart_backoff_s: float
    crash_loop_failures: int
    crash_loop_window_s: float
    channels: dict[str, ChannelSpec]
    stages: dict[str, StageSpec]
    # PM QoS wake-up latency the launcher holds while the pipeline runs (launch.cpu_latency);
    # None: none held.
    cpu_latency_us: int | None = None

    def stage(self, name: str) -> StageSpec:
        try:
            return self.stages[name]
        except KeyError:
            raise SpecError(f"{self.path}: no stage named {name!r} "
                            f"(stages: {', '.join(self.stages)})") from None


def module_exists(name: str) -> bool:
    """Whether `name` can be imported, found WITHOUT importing its parent packages (find_spec
    would run perception/audio/__init__.py, i.e. import torch, in every process reading a spec)."""
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        return False
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    locations = list(spec.submodule_search_locations or [])
    for i, part in enumerate(parts[1:], 1):
        last = i == len(parts) - 1
        nxt = []
        for loc in locations:
            pkg = os.path.join(loc, part)
            if last and os.path.isfile(pkg + ".py"):
                return True
            if os.path.isdir(pkg):  # a package, or a namespace package (no __init__.py)
                nxt.append(pkg)
        if not nxt:
            return False
        locations = nxt
    return True


def available_cores() -> list[int]:
    """The cores this process may run on (the container's cpuset, not the host's count)."""
    return sorted(os.sched_getaffinity(0))


def format_cores(cores) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the kernel's Cpus_allowed_list notation)."""
    cores = sorted(set(cores))
    parts, i = [], 0
    while i < len(cores):
        j = i
        while j + 1 < len(cores) and cores[j + 1] == cores[j] + 1:
            j += 1
        parts.append(str(cores[i]) if i == j else f"{cores[i]}-{cores[j]}")
        i = j + 1
    return ",".join(parts)


def parse_cores(text: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5]; raises ValueError on anything else."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            lo_i, hi_i = int(lo), int(hi)
            if hi_i < lo_i:
                raise ValueError(f"range {part!r} runs backwards")
            out.extend(range(lo_i, hi_i + 1))
        else:
            out.append(int(part))
    if not out:
        raise ValueError("empty core list")
    return sorted(set(out))


class _Fields:
    """Typed access to one TOML table that remembers the dotted path for error messages."""

    def __init__(self, src: str, path: str, table, allowed: set[str]):
        self.src, self.path = src, path
        if not isinstance(table, dict):
            self.fail(f"must be a table, got {type(table).__name__}")
        self.table = table
        for key in table:
            if key not in allowed:
                self.fail(f"unknown field (allowed: {', '.join(sorted(allowed))})", key)

    def where(self, key: str | None = None) -> str:
        return f"{self.path}.{key}" if key and self.path else (key or self.path)

    def fail(self, msg: str, key: str | None = None):
        raise SpecError(f"{self.src}: {self.where(key)}: {msg}")

    def get(self, key, typ, default=None, required=False):
        if key not in self.table:
            if required:
                self.fail("missing required field", key)
            return default
        val = self.table[key]
        typs = typ if isinstance(typ, tuple) else (typ,)
        # TOML booleans are not integers, whatever Python thinks.
        if isinstance(val, bool) and bool not in typs:
            self.fail(f"must be {' or '.join(t.__name__ for t in typs)}, got a boolean", key)
        if float in typs and isinstance(val, int) and not isinstance(val, bool):
            val = float(val)
        if not isinstance(val, typs):
            self.fail(f"must be {' or '.join(t.__name__ for t in typs)}, got "
                      f"{type(val).__name__} {val!r}", key)
        return val

    def positive(self, key, typ, default):
        val = self.get(key, typ, default)
        if val <= 0:
            self.fail(f"must be > 0, got {val!r}", key)
        return val


def _check_name(f: _Fields, name: str, what: str):
    if not _NAME_RE.match(name):
        f.fail(f"invalid {what} name {name!r}: use 1-64 characters from [A-Za-z0-9_-]")


def _parse_cores_field(f: _Fields, machine: list[int]):
    raw = f.get("cores", (str, list), "auto")
    if raw == "auto":
        return None
    if isinstance(raw, str):
        try:
            cores = parse_cores(raw)
        except ValueError as e:
            f.fail(f"{raw!r} is not 'auto' or a core list like '0-1,3': {e}", "cores")
    else:
        if not raw or not all(isinstance(c, int) and not isinstance(c, bool) for c in raw):
            f.fail(f"must be 'auto', a list of core numbers or a string like '0-1', got {raw!r}",
                   "cores")
        cores = sorted(set(raw))
    for c in cores:
        if c not in machine:
            f.fail(f"core {c} does not exist (this machine has cores {format_cores(machine)})",
                   "cores")
    return tuple(cores)


def _check_compute(f: _Fields, params: dict) -> None:
    """params.compute names what every stage module reads (runtime.compute.compute_kind):
    a typo is said here, not by a stage that crash-loops on it at run time."""
    from .compute import COMPUTES

    if "compute" in params and params["compute"] not in COMPUTES:
        f.fail(f"must be one of {', '.join(COMPUTES)}, got {params['compute']!r}",
               "params.compute")


def parse_spec(data: dict, src: str = "<spec>", machine_cores: list[int] | None = None) -> LaunchSpec:
    machine = machine_cores if machine_cores is not None else available_cores()
    top = _Fields(src, "", data, {"pipeline", "http", "supervisor", "channels", "stages"})
    pipe = _Fields(src, "pipeline", top.get("pipeline", dict, {}), {"model_dir", "cpu_latency_us"})
    cpu_latency_us = pipe.get("cpu_latency_us", int, None)
    if cpu_latency_us is not None and cpu_latency_us < 0:
        pipe.fail(f"must be a latency in microseconds >= 0, got {cpu_latency_us}",
                  "cpu_latency_us")
    model_dir = pipe.get("model_dir", str, "")
    if model_dir:
        md = Path(model_dir).expanduser()
        if not md.is_absolute():
            md = Path(src).resolve().parent / md
        if not md.is_dir():
            pipe.fail(f"directory {str(md)!r} does not exist", "model_dir")
        model_dir = str(md)

    http = _Fields(src, "http", top.get("http", dict, {}), {"host", "port"})
    host = http.get("host", str, "127.0.0.1")
    port = http.get("port", int, 8000)
    if not 0 <= port <= 65535:
        http.fail(f"must be a TCP port 0-65535, got {port}", "port")

    sup = _Fields(src, "supervisor", top.get("supervisor", dict, {}),
                  {"heartbeat_s", "dead_after_s", "restart_backoff_s",
                   "crash_loop_failures", "crash_loop_window_s"})
    heartbeat_s = sup.positive("heartbeat_s", float, 1.0)
    dead_after_s = sup.positive("dead_after_s", float, 3.0)
    if dead_after_s <= heartbeat_s:
        sup.fail(f"must be longer than heartbeat_s ({heartbeat_s}), got {dead_after_s}",
                 "dead_after_s")
    backoff = sup.positive("restart_backoff_s", float, 0.5)
    loop_n = sup.positive("crash_loop_failures", int, 5)
    loop_w = sup.positive("crash_loop_window_s", float, 60.0)

    channels: dict[str, ChannelSpec] = {}
    ch_table = top.get("channels", dict, {})
    for name, tbl in ch_table.items():
        cf = _Fields(src, f"channels.{name}", tbl, {"kind", "slots", "slot_bytes", "record"})
        _check_name(cf, name, "channel")
        kind = cf.get("kind", str, required=True)
        if kind not in CHANNEL_KINDS:
            cf.fail(f"must be one of {', '.join(CHANNEL_KINDS)}, got {kind!r}", "kind")
        slots = cf.positive("slots", int, 8)
        if kind == "pool":
            if "record" in cf.table:
                cf.fail("only rings have a record type", "record")
            channels[name] = ChannelSpec(name, kind, slots, cf.positive("slot_bytes", int, 1 << 20))
        else:
            from runtime.records import RECORD_TYPES
            if "slot_bytes" in cf.table:
                cf.fail("a ring's record size comes from its `record` type; remove slot_bytes",
                        "slot_bytes")
            record = cf.get("record", str, required=True)
            if record not in RECORD_TYPES:
                cf.fail(f"unknown record type {record!r} (known: {', '.join(RECORD_TYPES)})",
                        "record")
            channels[name] = ChannelSpec(name, kind, slots, RECORD_TYPES[record].itemsize, record)

    stages: dict[str, StageSpec] = {}
    st_table = top.get("stages", dict, None)
    if not st_table:
        top.fail("the spec has no stages (add a [stages.NAME] table)", "stages")
    for name, tbl in st_table.items():
        sf = _Fields(src, f"stages.{name}", tbl,
                     {"module", "cores", "gpu", "backend", "inputs", "outputs", "params"})
        _check_name(sf, name, "stage")
        module = sf.get("module", str, required=True)
        if not module_exists(module):
            sf.fail(f"module {module!r} cannot be found", "module")
        cores = _parse_cores_field(sf, machine)
        gpu = sf.get("gpu", str, "none")
        if not _GPU_RE.match(gpu):
            sf.fail(f"must be 'none', 'cpu', 'cuda' or 'cuda:N', got {gpu!r}", "gpu")
        backend = sf.get("backend", str, "numpy")
        if backend not in BACKENDS:
            sf.fail(f"must be one of {', '.join(BACKENDS)}, got {backend!r}", "backend")
        chans = {}
        for key in ("inputs", "outputs"):
            lst = sf.get(key, list, [])
            for i, ch in enumerate(lst):
                if not isinstance(ch, str):
                    sf.fail(f"entries must be channel names, got {ch!r}", f"{key}[{i}]")
                if ch not in channels:
                    sf.fail(f"channel {ch!r} is not declared (declared: "
                            f"{', '.join(channels) or 'none'})", f"{key}[{i}]")
            chans[key] = tuple(lst)
        params = sf.get("params", dict, {})
        _check_compute(sf, params)
        stages[name] = StageSpec(name, module, cores, gpu, backend,
                                 chans["inputs"], chans["outputs"], dict(params))
    return resolve_cores(LaunchSpec(src, model_dir, host, port, heartbeat_s, dead_after_s,
                                    backoff, loop_n, loop_w, channels, stages, cpu_latency_us),
                         machine)


def resolve_cores(spec: LaunchSpec, machine: list[int]) -> LaunchSpec:
    """Give each `auto` stage one core, spreading them over the least-used cores; record which
    stages end up sharing cores so the startup line can say so."""
    load = {c: 0 for c in machine}
    for st in spec.stages.values():
        for c in st.cores or ():
            load[c] += 1
    resolved = {}
    for name, st in spec.stages.items():
        if st.cores is None:
            core = min(machine, key=lambda c: (load[c], c))
            load[core] += 1
            st = _replace(st, cores=(core,))
        resolved[name] = st
    for name, st in resolved.items():
        others = tuple(o for o, ost in resolved.items()
                       if o != name and set(ost.cores) & set(st.cores))
        resolved[name] = _replace(st, shares_cores_with=others)
    return _replace(spec, stages=resolved)


def spare_cores(spec: LaunchSpec, machine: list[int]) -> list[int]:
    """The machine's cores that no stage is pinned to: room for a stage's worker threads (the
    gateway decodes images there), off the cores where the stages' own loops run."""
    used = {c for st in spec.stages.values() for c in st.cores}
    return [c for c in machine if c not in used]


def _replace(obj, **kw):
    from dataclasses import replace
    return replace(obj, **kw)


def load_spec(path: str | os.PathLike | None = None,
              machine_cores: list[int] | None = None) -> LaunchSpec:
    """Read and validate a launch spec file (the default spec when `path` is None)."""
    p = Path(path) if path is not None else DEFAULT_SPEC
    src = str(path) if path is not None else str(DEFAULT_SPEC)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{src}: file not found") from None
    except OSError as e:
        raise SpecError(f"{src}: cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SpecError(f"{src}: not UTF-8 text: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{src}: invalid TOML: {e}") from None
    return parse_spec(data, src, machine_cores)
