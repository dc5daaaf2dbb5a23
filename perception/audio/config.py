"""The configuration files of an audio checkpoint directory.

- config.json: a Hugging Face `WhisperConfig` (model_type "whisper"); only the architecture keys
  are read, with transformers' defaults where a key is absent.
- generation_config.json: Whisper's generation settings (decoder start, language/task token
  maps, suppressed tokens, max_length); absent keys fall back to config.json.
- adapter_config.json: the low-rank projection used in embed mode (see adapter.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AudioModelError


def read_json(path: Path, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise AudioModelError(f"{path}: missing")
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AudioModelError(f"{path}: unreadable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AudioModelError(f"{path}: expected a JSON object")
    return data


@dataclass(frozen=True)
class WhisperConfig:
    d_model: int = 384
    encoder_layers: int = 4
    decoder_layers: int = 4
    encoder_attention_heads: int = 6
    decoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_ffn_dim: int = 1536
    num_mel_bins: int = 80
    max_source_positions: int = 1500
    max_target_positions: int = 448
    vocab_size: int = 51865
    activation_function: str = "gelu"
    decoder_start_token_id: int = 50257
    eos_token_id: int = 50256
    suppress_tokens: tuple[int, ...] | None = None
    begin_suppress_tokens: tuple[int, ...] | None = None
    forced_decoder_ids: tuple[tuple[int, int | None], ...] | None = None

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config.json") -> "WhisperConfig":
        if raw.get("model_type", "whisper") != "whisper":
            raise AudioModelError(f"{where}: model_type is {raw.get('model_type')!r}, expected 'whisper'")
        kwargs = {}
        for f in cls.__dataclass_fields__.values():
            if f.name in raw and raw[f.name] is not None:
                value = raw[f.name]
                if f.name in ("suppress_tokens", "begin_suppress_tokens"):
                    value = tuple(int(v) for v in value)
                elif f.name == "forced_decoder_ids":
                    value = tuple((int(p), None if t is None else int(t)) for p, t in value)
                kwargs[f.name] = value
        cfg = cls(**kwargs)
        if cfg.activation_function not in ("gelu", "gelu_new", "relu"):
            raise AudioModelError(f"{where}: activation_function {cfg.activation_function!r} not supported")
        if cfg.d_model % cfg.encoder_attention_heads or cfg.d_model % cfg.decoder_attention_heads:
            raise AudioModelError(f"{where}: d_model {cfg.d_model} is not divisible by the head count")
        if cfg.num_mel_bins not in (80, 128):
            raise AudioModelError(f"{where}: num_mel_bins {cfg.num_mel_bins}; Whisper uses 80 or 128")
        return cfg

    @classmethod
    def from_dir(cls, audio_dir: Path) -> "WhisperConfig":
        return cls.from_dict(read_json(audio_dir / "config.json"), str(audio_dir / "config.json"))

    def to_hf_dict(self) -> dict:
        """config.json content that transformers' WhisperConfig reads back to the same model."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("suppress_tokens", "begin_suppress_tokens", "forced_decoder_ids"):
            d[key] = None if d[key] is None else [list(x) if isinstance(x, tuple) else x for x in d[key]]
        d.update({
            "architectures": ["WhisperForConditionalGeneration"],
            "model_type": "whisper",
            "is_encoder_decoder": True,
            "scale_embedding": False,
            "tie_word_embeddings": True,
            "bos_token_id": self.eos_token_id,
            "pad_token_id": self.eos_token_id,
            "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
            "use_cache": True,
            "torch_dtype": "float32",
        })
        return d


@dataclass(frozen=True)
class GenerationSettings:
    """What greedy transcription needs from generation_config.json (with config.json fallbacks)."""
    decoder_start_token_id: int
    eos_token_id: int
    max_length: int
    max_new_tokens: int | None = None
    no_timestamps_token_id: int | None = None
    lang_to_id: dict[str, int] = field(default_factory=dict)
    task_to_id: dict[str, int] = field(default_factory=dict)
    language: str | None = None
    task: str | None = None
    forced_decoder_ids: tuple[tuple[int, int | None], ...] | None = None
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()

    @classmethod
    def from_dir(cls, audio_dir: Path, model: WhisperConfig, tokenizer=None) -> "GenerationSettings":
        raw = read_json(audio_dir / "generation_config.json", required=False)

        def pick(key, default):
            value = raw.get(key)
            return default if value is None else value

        eos = pick("eos_token_id", model.eos_token_id)
        if isinstance(eos, list):
            eos = eos[0]
        no_ts = raw.get("no_timestamps_token_id")
        if no_ts is None and tokenizer is not None:
            no_ts = tokenizer.token_to_id("<|notimestamps|>")
        forced = raw.get("forced_decoder_ids", model.forced_decoder_ids)
        return cls(
            decoder_start_token_id=int(pick("decoder_start_token_id", model.decoder_start_token_id)),
            eos_token_id=int(eos),
            # transformers' GenerationConfig defaults max_length to 20 when nothing sets it.
            max_length=int(pick("max_length", 20)),
            max_new_tokens=raw.get("max_new_tokens"),
            no_timestamps_token_id=None if no_ts is None else int(no_ts),
            lang_to_id={k: int(v) for k, v in (raw.get("lang_to_id") or {}).items()},
            task_to_id={k: int(v) for k, v in (raw.get("task_to_id") or {}).items()},
            language=raw.get("language"),
            task=raw.get("task"),
            forced_decoder_ids=None if forced is None else tuple(
                (int(p), None if t is None else int(t)) for p, t in forced),
            suppress_tokens=tuple(int(t) for t in pick("suppress_tokens", model.suppress_tokens or ())),
            begin_suppress_tokens=tuple(
                int(t) for t in pick("begin_suppress_tokens", model.begin_suppress_tokens or ())),
        )


@dataclass(frozen=True)
class AdapterConfig:
    """adapter_config.json: encoder states [T, d_model] -> [ceil(T / pooling), decoder_hidden]."""
    encoder_d_model: int
    rank: int
    decoder_hidden: int
    pooling: int = 4
    activation: str | None = None      # None (purely linear low-rank map) or "gelu"
    prefix: str = "audio_adapter."

    @classmethod
    def from_dir(cls, audio_dir: Path) -> "AdapterConfig":
        path = audio_dir / "adapter_config.json"
        raw = read_json(path)
        try:
            cfg = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except TypeError as exc:
            raise AudioModelError(f"{path}: {exc}") from None
        if cfg.pooling not in (1, 2, 4, 8) or cfg.rank <= 0 or cfg.decoder_hidden <= 0:
            raise AudioModelError(f"{path}: pooling must be 1/2/4/8 and rank, decoder_hidden positive")
        if cfg.activation not in (None, "gelu"):
            raise AudioModelError(f"{path}: activation {cfg.activation!r} not supported")
        return cfg

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
