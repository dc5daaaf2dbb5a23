"""The embedded default: a small GLM-4.1V-architecture checkpoint the project makes itself.

Same format as a real AutoGLM-Phone-9B / GLM-4.1V directory (config.json, safetensors,
tokenizer.json with the GLM special tokens by name, tokenizer_config.json with the chat
template, generation_config.json, preprocessor_config.json), only tiny and random: it makes
`autoglm launch` work on a machine that cannot download the real weights. Everything is
deterministic (fixed seed, deterministic BPE training on the text in modelcore/data/).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .tokenizer import ENDOFTEXT, OBSERVATION, SPECIAL_TOKEN_NAMES, TAG_TOKEN_NAMES, USER

DATA_DIR = Path(__file__).parent / "data"
# Bump when the default checkpoint's content changes, so caches of the old one are not reused.
DEFAULT_FORMAT_VERSION = "2"  # 2: audio/ (Whisper-style encoder + adapter) added
BPE_VOCAB = 2048

DEFAULT_TEXT = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                    max_position_embeddings=32768, hidden_act="silu")
DEFAULT_VISION = dict(depth=2, hidden_size=128, num_heads=2, intermediate_size=512,
                      image_size=112, patch_size=14, temporal_patch_size=2, spatial_merge_size=2,
                      in_channels=3, hidden_act="silu", attention_bias=False, rms_norm_eps=1e-5)
# GLM-4.1V's partial rotary: half of each head rotates; mrope_section [8, 12, 12] of 32
# frequencies, scaled here to the smaller head (64 dims -> 32 rotate -> 16 frequencies).
PARTIAL_ROTARY = 0.5
MROPE_SECTION = [4, 6, 6]
# Pixel budget of the default image processor (applies to 2*H*W, the image is two frames).
MIN_PIXELS, MAX_PIXELS = 112 * 112, 28 * 28 * 2048


def corpus_lines() -> list[str]:
    lines = []
    for path in sorted(DATA_DIR.glob("corpus_*.txt")):
        lines.extend(l for l in path.read_text(encoding="utf-8").splitlines() if l.strip())
    return lines


def train_tokenizer(vocab_size: int = BPE_VOCAB):
    """Byte-level BPE trained on the shipped text; GLM special tokens appended by name."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers import AddedToken

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([l + "\n" for l in corpus_lines()], trainer=trainer)
    # Special tokens after the learned vocabulary, in GLM's order, as the real tokenizer has.
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in SPECIAL_TOKEN_NAMES])
    tok.add_tokens([AddedToken(n, special=False, normalized=False) for n in TAG_TOKEN_NAMES])
    return tok


def hf_config(vocab_size: int, ids: dict[str, int], text: dict | None = None,
              vision: dict | None = None, dtype: str = "bfloat16") -> dict:
    text = {**DEFAULT_TEXT, **(text or {})}
    vision = {**DEFAULT_VISION, **(vision or {})}
    vision["out_hidden_size"] = text["hidden_size"]
    return {
        "architectures": ["Glm4vForConditionalGeneration"],
        "model_type": "glm4v",
        "text_config": {
            "model_type": "glm4v_text", "vocab_size": vocab_size, **text,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": MROPE_SECTION,
                                "partial_rotary_factor": PARTIAL_ROTARY},
            "dtype": dtype,
        },
        "vision_config": {"model_type": "glm4v_vision", **vision},
        "image_token_id": ids["<|image|>"], "video_token_id": ids["<|video|>"],
        "image_start_token_id": ids["<|begin_of_image|>"],
        "image_end_token_id": ids["<|end_of_image|>"],
        "video_start_token_id": ids["<|begin_of_video|>"],
        "video_end_token_id": ids["<|end_of_video|>"],
        "tie_word_embeddings": False,
        "dtype": dtype,
    }


def text_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the decoder, read off the decoder module itself."""
    from decision.decoder import GlmDecoder
    from .config import ModelConfig

    with torch.device("meta"):
        dec = GlmDecoder(ModelConfig.from_dict(config))
    return {name: tuple(t.shape) for name, t in dec.checkpoint_tensors().items()}


def vision_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    v = config["vision_config"]
    h, out, inter = v["hidden_size"], v["out_hidden_size"], v["intermediate_size"]
    p, tp, m = v["patch_size"], v["temporal_patch_size"], v["spatial_merge_size"]
    pre = "model.visual."
    s = {
        pre + "patch_embed.proj.weight": (h, v["in_channels"], tp, p, p),
        pre + "patch_embed.proj.bias": (h,),
        pre + "post_conv_layernorm.weight": (h,),
        pre + "embeddings.position_embedding.weight": ((v["image_size"] // p) ** 2, h),
        pre + "post_layernorm.weight": (h,),
        pre + "downsample.weight": (out, h, m, m),
        pre + "downsample.bias": (out,),
        pre + "merger.proj.weight": (out, out),
        pre + "merger.post_projection_norm.weight": (out,),
        pre + "merger.post_projection_norm.bias": (out,),
        pre + "merger.gate_proj.weight": (inter, out),
        pre + "merger.up_proj.weight": (inter, out),
        pre + "merger.down_proj.weight": (out, inter),
    }
    for i in range(v["depth"]):
        b = f"{pre}blocks.{i}."
        s.update({b + "norm1.weight": (h,), b + "norm2.weight": (h,),
                  b + "attn.qkv.weight": (3 * h, h), b + "attn.proj.weight": (h, h),
                  b + "mlp.gate_proj.weight": (out, h), b + "mlp.up_proj.weight": (out, h),
                  b + "mlp.down_proj.weight": (h, out)})
        if v.get("attention_bias"):
            s[b + "attn.qkv.bias"] = (3 * h,)
    return s


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int,
                   dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Norm scales 1, biases 0, everything else N(0, 0.02): a well-conditioned random model."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("norm.weight") or "layernorm" in name or name.endswith(("norm1.weight", "norm2.weight")):
            t = torch.ones(shape)
        elif name.endswith("bias") and "q_proj" not in name and "k_proj" not in name and "v_proj" not in name:
            t = torch.zeros(shape)
        else:  # qkv biases random too, so a wrong bias path cannot hide behind zeros
            t = torch.randn(shape, generator=gen) * 0.02
        out[name] = t.to(dtype)
    return out


def write_default_checkpoint(out_dir: str | Path, seed: int = 0, dtype: str = "bfloat16",
                             text: dict | None = None, vision: dict | None = None,
                             max_shard_bytes: int = 5 * 1024**3) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    ids = {n: tok.token_to_id(n) for n in SPECIAL_TOKEN_NAMES + TAG_TOKEN_NAMES}
    vocab = -(-tok.get_vocab_size(with_added_tokens=True) // 64) * 64  # pad like GLM does
    config = hf_config(vocab, ids, text, vision, dtype)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    weights = random_weights({**text_shapes(config), **vision_shapes(config)}, seed,
                             getattr(torch, dtype))
    save_checkpoint(weights, out, max_shard_bytes=max_shard_bytes)
    stops = [ids[ENDOFTEXT], ids[USER], ids[OBSERVATION]]
    (out / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": stops, "pad_token_id": ids[ENDOFTEXT], "do_sample": False}, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT, "padding_side": "left",
        "clean_up_tokenization_spaces": False, "model_max_length": 32768,
        "chat_template": (DATA_DIR / "chat_template.jinja").read_text(),
    }, indent=2, ensure_ascii=False) + "\n")
    v = config["vision_config"]
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Glm4vImageProcessor", "processor_class": "Glm4vProcessor",
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "patch_size": v["patch_size"], "temporal_patch_size": v["temporal_patch_size"],
        "merge_size": v["spatial_merge_size"], "do_resize": True, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }, indent=2) + "\n")
    _write_audio_hook(out, config["text_config"]["hidden_size"], seed)
    return out


def _write_audio_hook(out: Path, decoder_hidden: int, seed: int) -> None:
    """The Whisper-style encoder + adapter into the decoder width, in `out/audio/`."""
    from perception.audio.writer import write_default_audio_checkpoint
    write_default_audio_checkpoint(out, decoder_hidden, seed)


def default_cache_dir() -> Path:
    from importlib import metadata
    try:
        version = metadata.version("autoglm-pipeline")
    except metadata.PackageNotFoundError:
        version = "dev"
    root = Path(os.environ.get("AUTOGLM_CACHE_DIR") or Path.home() / ".cache" / "autoglm")
    return root / f"default-{version}-f{DEFAULT_FORMAT_VERSION}"


def ensure_default_checkpoint(cache_dir: str | Path | None = None) -> Path:
    """The default checkpoint's directory, made on first use (atomically: build, then rename)."""
    target = Path(cache_dir) if cache_dir else default_cache_dir()
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        write_default_checkpoint(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is identical
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
