"""Model configuration parsed from a Hugging Face GLM-4.1V `config.json`.

Both forms that exist in the wild are accepted: transformers 5's `rope_parameters`
{rope_type, rope_theta, mrope_section, partial_rotary_factor} and the older top-level
`rope_theta` / `partial_rotary_factor` with `rope_scaling` {mrope_section}. Where a value is
absent we use the default of transformers' own Glm4v classes, since those classes define
what a checkpoint means.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_ARCHITECTURES = ("Glm4vForConditionalGeneration",)
SUPPORTED_MODEL_TYPES = ("glm4v",)


class ConfigError(ValueError):
    """config.json is missing, unreadable or describes a model this project does not run."""


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151552
    hidden_size: int = 4096
    intermediate_size: int = 13696
    num_hidden_layers: int = 40
    num_attention_heads: int = 32
    num_key_value_heads: int = 2
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # transformers defaults to 1.0 when the key is absent; GLM-4.1V's config sets 0.5.
    partial_rotary_factor: float = 1.0
    mrope_section: tuple[int, ...] = (8, 12, 12)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


@dataclass(frozen=True)
class VisionConfig:
    depth: int = 24
    hidden_size: int = 1536
    hidden_act: str = "silu"
    attention_bias: bool = False
    num_heads: int = 12
    in_channels: int = 3
    image_size: int = 336
    patch_size: int = 14
    rms_norm_eps: float = 1e-5
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    out_hidden_size: int = 4096
    intermediate_size: int = 13696
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class ModelConfig:
    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    image_token_id: int = 151343
    video_token_id: int = 151344
    image_start_token_id: int = 151339
    image_end_token_id: int = 151340
    video_start_token_id: int = 151341
    video_end_token_id: int = 151342
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        _check_architecture(raw)
        text_raw = raw.get("text_config") or {}
        vision_raw = raw.get("vision_config") or {}
        tie = bool(raw.get("tie_word_embeddings", text_raw.get("tie_word_embeddings", False)))
        ids = {k: int(raw[k]) for k in _TOKEN_ID_KEYS if raw.get(k) is not None}
        eos = text_raw.get("eos_token_id", raw.get("eos_token_id"))
        return cls(
            text=_text_config(text_raw),
            vision=_vision_config(vision_raw),
            tie_word_embeddings=tie,
            torch_dtype=str(raw.get("dtype") or raw.get("torch_dtype")
                            or text_raw.get("dtype") or text_raw.get("torch_dtype") or "bfloat16"),
            eos_token_ids=_as_tuple(eos),
            **ids,
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path}: no config.json (is {model_dir} a model directory?)")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(raw)


_TOKEN_ID_KEYS = (
    "image_token_id", "video_token_id", "image_start_token_id",
    "image_end_token_id", "video_start_token_id", "video_end_token_id",
)


def _check_architecture(raw: dict) -> None:
    archs = raw.get("architectures") or []
    model_type = raw.get("model_type")
    if model_type in SUPPORTED_MODEL_TYPES or any(a in SUPPORTED_ARCHITECTURES for a in archs):
        return
    raise ConfigError(
        f"unsupported architecture {archs or model_type!r}: this runtime serves "
        f"{', '.join(SUPPORTED_ARCHITECTURES)} (model_type 'glm4v')"
    )


def _as_tuple(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def _rope_value(raw: dict, key: str, default):
    """A rope setting from `rope_parameters`, else `rope_scaling`, else the top level."""
    for section in ("rope_parameters", "rope_scaling"):
        params = raw.get(section) or {}
        if key in params and params[key] is not None:
            return params[key]
    return raw.get(key, default)


def _pick(raw: dict, *names: str) -> dict:
    return {n: raw[n] for n in names if raw.get(n) is not None}


def _text_config(raw: dict) -> TextConfig:
    d = TextConfig()
    known = _pick(raw, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "hidden_act",
                  "max_position_embeddings", "rms_norm_eps")
    heads = int(known.get("num_attention_heads", d.num_attention_heads))
    hidden = int(known.get("hidden_size", d.hidden_size))
    return TextConfig(
        **known,
        head_dim=int(raw.get("head_dim") or hidden // heads),
        rope_theta=float(_rope_value(raw, "rope_theta", d.rope_theta)),
        partial_rotary_factor=float(_rope_value(raw, "partial_rotary_factor", d.partial_rotary_factor)),
        mrope_section=tuple(int(x) for x in _rope_value(raw, "mrope_section", d.mrope_section)),
    )


def _vision_config(raw: dict) -> VisionConfig:
    d = VisionConfig()
    known = _pick(raw, "depth", "hidden_size", "hidden_act", "attention_bias", "num_heads",
                  "in_channels", "image_size", "patch_size", "rms_norm_eps", "spatial_merge_size",
                  "temporal_patch_size", "out_hidden_size", "intermediate_size")
    return VisionConfig(**known, rope_theta=float(_rope_value(raw, "rope_theta", d.rope_theta)))
