"""`autoglm launch [SPEC]`: start the whole pipeline from a launch spec."""
from __future__ import annotations

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
    from .spec import DEFAULT_SPEC, SpecError, available_cores, format_cores, load_spec, spare_cores

    instance = check_instance(args.instance, "launch")
    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        raise SystemExit(f"autoglm launch: {e}") from None
    if args.check:
        print(f"{spec.path}: OK")
        for st in spec.stages.values():
            shared = f" (shared with {', '.join(st.shares_cores_with)})" if st.shares_cores_with else ""
            print(f"  {st.name:<10} cores {format_cores(st.cores)}{shared}  module {st.module}")
        spare = spare_cores(spec, available_cores())
        print(f"  spare cores {format_cores(spare)} (worker threads: the gateway's media decoding)"
              if spare else "  no spare cores")
        return 0
    _apply_overrides(args, spec)
    try:
        return launch(args.spec or str(DEFAULT_SPEC), instance)
    except InstanceBusyError as e:
        raise SystemExit(f"autoglm launch: {e}") from None


def _apply_overrides(args, spec) -> None:
    """--model/--host/--port reach the stage processes through their environment (they read
    the spec file themselves); the embedded default model is made here, once, before any stage
    starts, rather than by four stages racing to build it."""
    import json
    import os
    from pathlib import Path

    from runtime.compute import ENV_GATEWAY, ENV_HTTP_HOST, ENV_HTTP_PORT, ENV_MODEL_DIR

    if args.port is not None and not 0 <= args.port <= 65535:
        raise SystemExit(f"autoglm launch: --port {args.port} is not a TCP port (0-65535)")
    if args.model:
        model = Path(args.model).expanduser().resolve()
        if not (model / "config.json").is_file():
            raise SystemExit(f"autoglm launch: --model {args.model}: no config.json there")
        os.environ[ENV_MODEL_DIR] = str(model)
    elif not spec.model_dir and any(st.params.get("compute") == "model"
                                    for st in spec.stages.values()):
        from modelcore.make_checkpoint import ensure_default_checkpoint
        print("[launch] model: the embedded default (made on first use)", flush=True)
        os.environ[ENV_MODEL_DIR] = str(ensure_default_checkpoint())
    if os.environ.get(ENV_MODEL_DIR):
        print(f"[launch] model: {os.environ[ENV_MODEL_DIR]}", flush=True)
    gateway = _gateway_overrides(args)
    if gateway:
        os.environ[ENV_GATEWAY] = json.dumps(gateway)
    if args.host:
        os.environ[ENV_HTTP_HOST] = args.host
    if args.port is not None:
        os.environ[ENV_HTTP_PORT] = str(args.port)
    if any(st.module == "execution.stage" and st.params.get("compute") == "model"
           for st in spec.stages.values()):
        host = args.host or spec.http_host
        port = args.port if args.port is not None else spec.http_port
        print(f"[launch] OpenAI API will be served at http://{host}:{port}/v1 "
              f"once the gateway is ready", flush=True)


def _gateway_overrides(args) -> dict:
    """The gateway flags given on the command line, as the gateway stage's param names."""
    from pathlib import Path

    media = args.allowed_local_media_path
    if media is not None:
        media = Path(media).expanduser().resolve()
        if not media.is_dir():
            raise SystemExit(f"autoglm launch: --allowed-local-media-path {args.allowed_local_media_path}: "
                             f"not a directory")
    given = {"served_model_names": args.served_model_name, "api_key": args.api_key,
             "allowed_local_media_path": str(media) if media else None,
             "content_format": args.chat_template_content_format}
    return {k: v for k, v in given.items() if v is not None}
