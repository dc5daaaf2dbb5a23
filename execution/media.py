"""Fetch the bytes of an image or audio part: data: URLs, or local files under an allowed
directory. No network access (the gateway runs on boxes that have none, and fetching
arbitrary URLs from a server is an SSRF hole); remote URLs are refused with a message saying
what to send instead.

Local files follow vLLM's ``--allowed-local-media-path``: ``file:///abs/path`` (or a bare
absolute path) is read only if its real path (symlinks resolved) lies under the allowed
directory, so ``..`` or a symlink cannot escape it.
"""
from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import invalid


def _b64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(f"{param}: the data is not valid base64 ({exc}).", param=param) from None


def load_url_bytes(url: str, param: str, allowed_dir: Path | None,
                   max_bytes: int | None = None) -> bytes:
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep:
            raise invalid(f"{param}: malformed data: URL (no ',').", param=param)
        if not head.endswith(";base64"):
            raise invalid(f"{param}: only base64 data: URLs are accepted "
                          "(data:image/png;base64,...).", param=param)
        mime = head[len("data:"):-len(";base64")].lower()
        if mime and not mime.startswith("image/") and mime != "application/octet-stream":
            raise invalid(f"{param}: the data: URL says {mime!r}; an image_url takes an image "
                          "(data:image/png;base64,...).", param=param, code="invalid_image")
        return _b64(payload, param)
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        raise invalid(f"{param}: remote URLs are not fetched by this server; send the image "
                      "inline as a data: URL (data:image/png;base64,...).", param=param,
                      code="remote_url_not_allowed")
    if parsed.scheme == "file":
        path = unquote(parsed.path)
    elif parsed.scheme == "" and url.startswith("/"):
        path = url
    else:
        raise invalid(f"{param}: unsupported URL scheme {parsed.scheme!r}; use a data: URL.",
                      param=param)
    if allowed_dir is None:
        raise invalid(f"{param}: local files are not allowed (the server was started without "
                      "--allowed-local-media-path); send a data: URL.", param=param,
                      code="local_file_not_allowed")
    real = Path(os.path.realpath(path))
    root = Path(os.path.realpath(allowed_dir))
    if real != root and root not in real.parents:
        raise invalid(f"{param}: {path} is outside the allowed media directory.", param=param,
                      code="local_file_not_allowed")
    if not real.is_file():
        raise invalid(f"{param}: no such file: {path}", param=param)
    if max_bytes is not None and real.stat().st_size > max_bytes:
        raise invalid(f"{param}: file is {real.stat().st_size} bytes, over the {max_bytes} "
                      "byte limit.", param=param)
    return real.read_bytes()


def audio_bytes(data_b64: str, param: str) -> bytes:
    return _b64(data_b64, f"{param}.data")
