"""Gateway settings and their command-line flags (named like vLLM's serve flags where one exists,
so that Open-AutoGLM's documented command lines translate one to one)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PrepareConfig:
    max_model_len: int = 25480
    content_format: str = "openai"  # or "string" (vLLM's --chat-template-content-format)
    allowed_media_dir: Path | None = None
    chat_template: str | None = None  # None: the checkpoint's, else the built-in one

DEFAULT_SERVED_NAME = "autoglm-phone-9b"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # a few base64 screenshots fit comfortably


@dataclass(frozen=True)
class GatewayConfig:
    served_model_names: tuple[str, ...] = (DEFAULT_SERVED_NAME,)
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_images: int = 10
    max_audios: int = 4
    response_cache_size: int = 0  # 0: off
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model_root: str = ""  # shown as "root" in /v1/models
    # Cores for image and audio decoding threads (execution.media_workers); empty: Starlette's
    # threads, on the gateway's own core.
    media_cores: tuple[int, ...] = ()

    @property
    def served_name(self) -> str:
        return self.served_model_names[0]


def add_gateway_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("OpenAI gateway")
    g.add_argument("--served-model-name", nargs="+", default=[DEFAULT_SERVED_NAME],
                   help="model name(s) clients send; the first is reported (default %(default)s)")
    g.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: no auth)")
    g.add_argument("--max-model-len", type=int, default=25480,
                   help="context length: prompt + completion tokens (default %(default)s)")
    g.add_argument("--max-images", type=int, default=10,
                   help="images allowed per request (default %(default)s)")
    g.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="largest request body accepted, bytes (default %(default)s)")
    g.add_argument("--allowed-local-media-path", type=Path, default=None,
                   help="directory from which file:// image URLs may be read (default: none)")
    g.add_argument("--chat-template-content-format", choices=("openai", "string"),
                   default="openai", help="how list content reaches the chat template")
    g.add_argument("--response-cache-size", type=int, default=0,
                   help="LRU entries for deterministic requests (temperature 0 or a seed); "
                        "0 turns the cache off (default)")


def config_from_args(args: argparse.Namespace, model_root: str = "") -> GatewayConfig:
    for name in ("max_model_len", "max_images", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise SystemExit(f"autoglm serve: --{name.replace('_', '-')} must be >= 1")
    if args.response_cache_size < 0:
        raise SystemExit("autoglm serve: --response-cache-size must be >= 0")
    media = args.allowed_local_media_path
    if media is not None and not media.is_dir():
        raise SystemExit(f"autoglm serve: --allowed-local-media-path {media} is not a directory")
    return GatewayConfig(
        served_model_names=tuple(args.served_model_name), api_key=args.api_key,
        max_body_bytes=args.max_body_bytes, max_images=args.max_images,
        response_cache_size=args.response_cache_size, model_root=model_root,
        prepare=PrepareConfig(max_model_len=args.max_model_len,
                              content_format=args.chat_template_content_format,
                              allowed_media_dir=media))
