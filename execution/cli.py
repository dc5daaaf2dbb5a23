"""`autoglm gateway`: serve the OpenAI API in front of a launched pipeline instance."""
from __future__ import annotations


def register(subparsers) -> None:
    from .config import add_gateway_arguments

    p = subparsers.add_parser(
        "gateway", help="serve the OpenAI-compatible API for a launched pipeline",
        description="Serve POST /v1/chat/completions, GET /v1/models, /health and /metrics in "
                    "front of a running `autoglm launch` instance (requests over DDS, media and "
                    "tokens through shared memory).")
    p.add_argument("--instance", default="default", help="pipeline instance (default 'default')")
    p.add_argument("--model", default=None,
                   help="model directory (tokenizer.json, chat template, preprocessor config); "
                        "default: the embedded default checkpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    add_gateway_arguments(p)
    p.set_defaults(func=_gateway)


def _gateway(args) -> int:
    from pathlib import Path

    from .config import config_from_args
    from .server import build_gateway_app, serve

    if args.model and not Path(args.model, "tokenizer.json").is_file():
        raise SystemExit(f"autoglm gateway: {args.model} has no tokenizer.json")
    if not 0 <= args.port <= 65535:
        raise SystemExit(f"autoglm gateway: --port {args.port} is not a port number")
    config = config_from_args(args, model_root=args.model or "")
    serve(build_gateway_app(args.model, args.instance, config), args.host, args.port)
    return 0
