"""`autoglm launch [SPEC]`: start the whole pipeline from a launch spec."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .instance_name import add_instance_arg, check_instance


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "launch", help="start the pipeline (stages pinned to cores, supervised)",
        description="Create the shm channels, start every stage of the launch spec as its own "
                    "process pinned to its cores, supervise them (heartbeats, restarts), and "
                    "stop everything cleanly on Ctrl-C or SIGTERM.")
    p.add_argument("spec", nargs="?", help="launch spec (TOML); default: launch/specs/default.toml")
    add_instance_arg(p)
    p.add_argument("--check", action="store_true", help="validate the spec, print the plan, start nothing")
    p.add_argument("--model", metavar="DIR", help="model directory (Hugging Face GLM-4.1V layout); "
                   "default: the spec's model_dir, else the embedded default model")
    p.add_argument("--host", help="HTTP host of the OpenAI API (default: the spec's [http].host)")
    p.add_argument("--port", type=int, help="HTTP port of the OpenAI API (default: the spec's [http].port)")
    g = p.add_argument_group("OpenAI gateway (override the gateway stage's params in the spec)")
    g.add_argument("--served-model-name", nargs="+", metavar="NAME",
                   help="model name(s) clients send; the first is reported (default autoglm-phone-9b)")
    g.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/*")
    g.add_argument("--allowed-local-media-path", metavar="DIR",
                   help="directory from which file:// image and audio URLs may be read")
    g.add_argument("--chat-template-content-format", choices=("openai", "string"),
                   help="how list content reaches the chat template; Open-AutoGLM prescribes string")
    p.set_defaults(func=_launch)


def _launch(args) -> int:
    from shm.errors import InstanceBusyError

    from .launcher import launch
    from .spec import DEFAULT_SPEC, SpecError, load_spec

    instance = check_instance(args.instance, "launch")
    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        raise SystemExit(f"autoglm launch: {e}") from None
    # --check and a launch make the same checks: what --check passes, a launch does not refuse.
    plan = _preflight(args, spec, pick_port=not args.check)
    if args.check:
        _print_plan(spec, plan)
        return 0
    _apply_overrides(args, spec, plan)
    try:
        return launch(args.spec or str(DEFAULT_SPEC), instance)
    except InstanceBusyError as e:
        raise SystemExit(f"autoglm launch: {e}") from None


@dataclass
class _Plan:
    """What the checks found: where the API listens, which model and media directory."""
    host: str
    port: int                 # a concrete free port once port 0 was picked
    serves_http: bool         # the gateway serves the OpenAI API (params.compute = "model")
    uses_model: bool          # some stage loads the model
    model_dir: str | None     # --model, else the spec's model_dir; None: the embedded default
    media: str | None         # --allowed-local-media-path, resolved


def _fail(msg: str):
    raise SystemExit(f"autoglm launch: {msg}")


def _preflight(args, spec, *, pick_port: bool) -> _Plan:
    """Every check that can be made before a process starts: a bad port, host, model or media
    directory is one line here instead of stages that crash-loop on it."""
    uses_model = any(st.params.get("compute") == "model" for st in spec.stages.values())
    serves_http = any(st.module == "execution.stage" and st.params.get("compute") == "model"
                      for st in spec.stages.values())
    host = args.host or spec.http_host
    port = args.port if args.port is not None else spec.http_port
    if not 0 <= port <= 65535:
        _fail(f"--port {port} is not a TCP port (0-65535)")
    media = _media_dir(args.allowed_local_media_path)
    model_dir = None
    if args.model:
        model_dir = str(Path(args.model).expanduser().resolve())
        _check_model_dir(Path(model_dir), f"--model {args.model}")
    elif spec.model_dir and uses_model:
        model_dir = spec.model_dir
        _check_model_dir(Path(model_dir), f"{spec.path}: pipeline.model_dir")
    if serves_http and (port or pick_port):
        port = _claim_port(host, port)
    return _Plan(host, port, serves_http, uses_model, model_dir, media)


def _media_dir(given: str | None) -> str | None:
    if given is None:
        return None
    media = Path(given).expanduser().resolve()
    if not media.is_dir():
        _fail(f"--allowed-local-media-path {given}: not a directory")
    return str(media)


def _check_model_dir(d: Path, what: str) -> None:
    """A directory the model stages can load: config.json parsed by the stages' own parser
    (modelcore.config), tokenizer.json and safetensors weights present. The weights are only
    looked for: modelcore.checkpoint would import torch (2 s) into the launcher."""
    from modelcore.config import ConfigError, ModelConfig

    if not d.is_dir():
        _fail(f"{what}: not a directory")
    cfg = d / "config.json"
    try:
        ModelConfig.from_dir(d)
    except ConfigError as e:
        msg = str(e)
        _fail(f"{what}: {msg if msg.startswith(str(cfg)) else f'{cfg}: {msg}'}")
    except OSError as e:
        _fail(f"{what}: {cfg}: cannot read: {e.strerror}")
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        _fail(f"{what}: {cfg}: not a GLM-4.1V config ({type(e).__name__}: {e})")
    if not (d / "tokenizer.json").is_file():
        _fail(f"{what}: {d / 'tokenizer.json'}: missing (the model's tokenizer)")
    if not (d / "model.safetensors.index.json").is_file() and not any(d.glob("*.safetensors")):
        _fail(f"{what}: {d}: no weights (model.safetensors, model.safetensors.index.json "
              f"or *.safetensors)")


def _claim_port(host: str, port: int) -> int:
    """Bind host:port as the gateway will (SO_REUSEADDR, as uvicorn) and let go: a port in use
    or a host that is not this machine's is said now. Port 0 becomes a concrete free port that
    every start of the gateway uses, so a restarted gateway serves where the first one did."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except socket.gaierror as e:
            _fail(f"cannot listen on {host}:{port}: unknown host {host!r} ({e.strerror})")
        except OSError as e:
            why = (f"{host} is not an address of this machine" if e.errno == errno.EADDRNOTAVAIL
                   else (e.strerror or str(e)).lower())
            _fail(f"cannot listen on {host}:{port}: {why}")
        return s.getsockname()[1]


def _print_plan(spec, plan: _Plan) -> None:
    from .spec import available_cores, format_cores, spare_cores

    print(f"{spec.path}: OK")
    for st in spec.stages.values():
        shared = f" (shared with {', '.join(st.shares_cores_with)})" if st.shares_cores_with else ""
        print(f"  {st.name:<10} cores {format_cores(st.cores)}{shared}  module {st.module}")
    spare = spare_cores(spec, available_cores())
    print(f"  spare cores {format_cores(spare)} (worker threads: the gateway's media decoding)"
          if spare else "  no spare cores")
    if plan.uses_model:
        print(f"  model {plan.model_dir or 'the embedded default (made on first launch)'}")
    if plan.serves_http:
        print(f"  OpenAI API at http://{plan.host}:{plan.port or '(any free port)'}/v1")


def _apply_overrides(args, spec, plan: _Plan) -> None:
    """--model/--host/--port reach the stage processes through their environment (they read
    the spec file themselves); the embedded default model is made here, once, before any stage
    starts, rather than by four stages racing to build it."""
    import json
    import os

    from runtime.compute import ENV_GATEWAY, ENV_HTTP_HOST, ENV_HTTP_PORT, ENV_MODEL_DIR

    if args.model:
        os.environ[ENV_MODEL_DIR] = plan.model_dir
    elif not spec.model_dir and plan.uses_model:
        from modelcore.make_checkpoint import ensure_default_checkpoint
        print("[launch] model: the embedded default (made on first use)", flush=True)
        os.environ[ENV_MODEL_DIR] = str(ensure_default_checkpoint())
    if os.environ.get(ENV_MODEL_DIR):
        print(f"[launch] model: {os.environ[ENV_MODEL_DIR]}", flush=True)
    gateway = _gateway_overrides(args, plan)
    if gateway:
        os.environ[ENV_GATEWAY] = json.dumps(gateway)
    if args.host:
        os.environ[ENV_HTTP_HOST] = args.host
    if args.port is not None or plan.port != spec.http_port:   # port 0: the one picked
        os.environ[ENV_HTTP_PORT] = str(plan.port)
    if plan.serves_http:
        print(f"[launch] OpenAI API will be served at http://{plan.host}:{plan.port}/v1 "
              f"once the gateway is ready", flush=True)


def _gateway_overrides(args, plan: _Plan) -> dict:
    """The gateway flags given on the command line, as the gateway stage's param names."""
    given = {"served_model_names": args.served_model_name, "api_key": args.api_key,
             "allowed_local_media_path": plan.media,
             "content_format": args.chat_template_content_format}
    return {k: v for k, v in given.items() if v is not None}
