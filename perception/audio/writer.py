"""Writing Whisper checkpoints in Hugging Face's format: the embedded default and test models.

`write_default_audio_checkpoint(model_dir, decoder_hidden)` creates `model_dir/audio/`: a tiny
random Whisper (d_model 64, 2+2 layers, 80 mel bins), its byte-level tokenizer, generation
config and the low-rank adapter, about 1 MB. The files are what transformers itself writes
(`WhisperForConditionalGeneration.from_pretrained` loads them; tests/audio checks it).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from modelcore.checkpoint import save_checkpoint

from .adapter import ADAPTER_FILE
from .config import AdapterConfig, WhisperConfig
from .mel import HOP_LENGTH, N_FFT, SAMPLE_RATE, WINDOW_SECONDS
from .model import WhisperDecoder, WhisperEncoder

LANGUAGES = ("en", "zh")
# Whisper's special tokens, in Whisper's order, after the 256 byte tokens.
SPECIAL_TOKENS = ("<|endoftext|>", "<|startoftranscript|>", *(f"<|{c}|>" for c in LANGUAGES),
                  "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                  "<|nocaptions|>", "<|notimestamps|>")


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order (what ByteLevel expects)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def build_byte_tokenizer():
    """A Whisper-shaped tokenizer: 256 byte tokens (no merges) + Whisper's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def generation_config_for(tokenizer, model: WhisperConfig, language: str | None = "en",
                          task: str | None = "transcribe", max_length: int = 448) -> dict:
    tid = tokenizer.token_to_id
    cfg = {
        "decoder_start_token_id": tid("<|startoftranscript|>"),
        "eos_token_id": tid("<|endoftext|>"),
        "bos_token_id": tid("<|endoftext|>"),
        "pad_token_id": tid("<|endoftext|>"),
        "no_timestamps_token_id": tid("<|notimestamps|>"),
        "prev_sot_token_id": tid("<|startofprev|>"),
        "lang_to_id": {f"<|{c}|>": tid(f"<|{c}|>") for c in LANGUAGES},
        "task_to_id": {"transcribe": tid("<|transcribe|>"), "translate": tid("<|translate|>")},
        "is_multilingual": True,
        "max_length": min(max_length, model.max_target_positions),
        "suppress_tokens": [],
        "begin_suppress_tokens": [tid("<|endoftext|>")],
        "return_timestamps": False,
    }
    if language is not None:
        cfg["language"] = language
    if task is not None:
        cfg["task"] = task
    return cfg


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's fixed encoder position table (sin half, cos half, log-spaced timescales)."""
    inc = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1).float()


def random_whisper_tensors(cfg: WhisperConfig, seed: int, with_decoder: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    parts = {"model.encoder.": WhisperEncoder(cfg)}
    if with_decoder:
        parts["model.decoder."] = WhisperDecoder(cfg)
    tensors = {}
    for prefix, module in parts.items():
        for name, t in module.state_dict().items():
            if name.endswith("layer_norm.weight"):
                v = 1.0 + 0.1 * torch.randn(t.shape, generator=gen)
            elif name == "embed_positions.weight" and prefix == "model.encoder.":
                v = sinusoids(*t.shape)
            elif name.endswith(".weight") and t.dim() >= 2:
                fan_in = t[0].numel()
                v = torch.randn(t.shape, generator=gen) / math.sqrt(fan_in)
            else:
                v = 0.02 * torch.randn(t.shape, generator=gen)
            tensors[prefix + name] = v.contiguous()
    return tensors


def write_whisper_checkpoint(audio_dir: str | Path, cfg: WhisperConfig, seed: int = 0,
                             tokenizer=None, language: str | None = "en",
                             with_decoder: bool = True) -> Path:
    """A random Whisper in HF layout: config.json, model.safetensors, preprocessor_config.json,
    and (with a tokenizer) tokenizer.json + generation_config.json."""
    audio_dir = Path(audio_dir)
    audio_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(random_whisper_tensors(cfg, seed, with_decoder), audio_dir)
    (audio_dir / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
    (audio_dir / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "WhisperProcessor",
        "feature_size": cfg.num_mel_bins, "sampling_rate": SAMPLE_RATE, "hop_length": HOP_LENGTH,
        "chunk_length": WINDOW_SECONDS, "n_fft": N_FFT, "n_samples": WINDOW_SECONDS * SAMPLE_RATE,
        "nb_max_frames": WINDOW_SECONDS * SAMPLE_RATE // HOP_LENGTH, "padding_side": "right",
        "padding_value": 0.0, "return_attention_mask": False}, indent=2))
    if tokenizer is not None:
        tokenizer.save(str(audio_dir / "tokenizer.json"))
        (audio_dir / "generation_config.json").write_text(
            json.dumps(generation_config_for(tokenizer, cfg, language=language), indent=2))
    return audio_dir


def write_adapter(audio_dir: str | Path, cfg: AdapterConfig, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    audio_dir = Path(audio_dir)
    gen = torch.Generator().manual_seed(seed + 1)
    tensors = {
        cfg.prefix + "down.weight": torch.randn(cfg.rank, cfg.encoder_d_model, generator=gen)
        / math.sqrt(cfg.encoder_d_model),
        cfg.prefix + "up.weight": torch.randn(cfg.decoder_hidden, cfg.rank, generator=gen) / math.sqrt(cfg.rank),
        cfg.prefix + "up.bias": torch.zeros(cfg.decoder_hidden),
    }
    save_file(tensors, str(audio_dir / ADAPTER_FILE), metadata={"format": "pt"})
    (audio_dir / "adapter_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return audio_dir / ADAPTER_FILE


DEFAULT_AUDIO_CONFIG = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                            decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
                            num_mel_bins=80, max_source_positions=1500, max_target_positions=448)


def write_default_audio_checkpoint(out_dir: str | Path, decoder_hidden: int, seed: int = 0,
                                   rank: int = 16, pooling: int = 4) -> Path:
    """Write `out_dir/audio/` (the embedded default's audio part); returns that directory."""
    tok = build_byte_tokenizer()
    cfg = WhisperConfig(**DEFAULT_AUDIO_CONFIG, vocab_size=tok.get_vocab_size(),
                        decoder_start_token_id=tok.token_to_id("<|startoftranscript|>"),
                        eos_token_id=tok.token_to_id("<|endoftext|>"))
    audio_dir = write_whisper_checkpoint(Path(out_dir) / "audio", cfg, seed, tokenizer=tok)
    write_adapter(audio_dir, AdapterConfig(encoder_d_model=cfg.d_model, rank=rank,
                                           decoder_hidden=int(decoder_hidden), pooling=pooling), seed)
    return audio_dir
