"""Assemble and run the gateway: tokenizer + image processor from the model directory, the
shm/DDS client of a launched instance, the ASGI app under uvicorn.

The execution stage (execution/stage.py, run by the stage runtime) or `autoglm gateway` call
`build_gateway_app(...)` then `serve(app, host, port)`.
"""
from __future__ import annotations

from pathlib import Path

from .config import GatewayConfig


def build_gateway_app(model_dir: str | Path | None, instance: str,
                      config: GatewayConfig = GatewayConfig(), *, client=None,
                      audio_mode: str | None = None, audio_params: dict | None = None):
    """`audio_mode`: the audio stage's mode in this deployment ("embed": audio placeholders
    go into the prompt, see prepare.AudioLayout; "transcribe": the audio stage's transcript
    does, see prepare.AudioTranscription); None: neither. `audio_params`: the audio stage's
    params (max_seconds, transcribe_timeout_s are read here)."""
    from modelcore.tokenizer import GlmTokenizer
    from perception.vision.processor import ImageProcessor

    from .app import build_app
    from .prepare import (DEFAULT_MAX_AUDIO_SECONDS, AudioLayout, AudioTranscription,
                          RequestPreparer)
    from .shm_client import ShmPipelineClient

    if not model_dir:
        from modelcore.make_checkpoint import ensure_default_checkpoint
        model_dir = ensure_default_checkpoint()
    tok = GlmTokenizer.from_dir(model_dir)
    images = ImageProcessor.from_dir(model_dir)
    client = client or ShmPipelineClient(instance)
    own_size = None
    if isinstance(client, ShmPipelineClient):
        own_size = _frame_at_own_size(client, instance)
        config = _within_pools(config, client, instance)
    audio_params = dict(audio_params or {})
    audio = AudioLayout.from_dir(model_dir, tok) if audio_mode == "embed" else None
    transcription = None
    if audio_mode == "transcribe":
        transcription = AudioTranscription(
            client.transcribe, float(audio_params.get("transcribe_timeout_s", 120.0)))
    max_s = float(audio_params.get("max_seconds", DEFAULT_MAX_AUDIO_SECONDS))
    return build_app(config, client, RequestPreparer(tok, images, config.prepare, audio,
                                                     transcription, max_s, own_size))


def _within_pools(config: GatewayConfig, client, instance: str) -> GatewayConfig:
    """Per-request media limits no larger than the pools they go through: a request needs a
    slot per image (frames) and per clip (pcm) at once, so one with more could never be
    written, and would hold the pool while it waited."""
    import dataclasses

    from shm.errors import ChannelNotFoundError, InstanceNotFoundError
    from shm.registry import Registry

    limits = {}
    for field, channel in (("max_images", "frames"), ("max_audios", "pcm")):
        try:
            slots = Registry(instance).channel(client.channels[channel]).count
        except (ChannelNotFoundError, InstanceNotFoundError, KeyError):
            continue
        limits[field] = min(getattr(config, field), slots)
    return dataclasses.replace(config, **limits)


def _frame_at_own_size(client, instance: str):
    """An image may go at its own size when it fits a `frames` slot of the instance and a
    stage resizes frames on its GPU (the vision stage says so when ready); else the gateway
    resizes it. None when the instance has no `frames` pool."""
    from shm.errors import ChannelNotFoundError, InstanceNotFoundError
    from shm.registry import Registry

    try:
        slot = Registry(instance).channel(client.channels["frames"]).item_bytes
    except (ChannelNotFoundError, InstanceNotFoundError):
        return None
    return lambda nbytes: nbytes <= slot and client.frames_resized_downstream()


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on")
