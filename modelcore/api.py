"""Python API: load the whole model in one process, inspect it, generate.

    from modelcore.api import AutoGLMModel, MultiModalConfig
    model = AutoGLMModel.from_pretrained("path/to/autoglm-phone-9b",
                                         config=MultiModalConfig(quantize="int8"))
    print(model.summary())
    print(model.generate([{"role": "user", "content": "Hello"}], max_new_tokens=32))

The served pipeline runs the same modules in separate processes; this is the in-process form.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

VISION_ENCODERS = ("auto", "glm4v-vit", "vit-tiny")
AUDIO_ENCODERS = ("auto", "whisper", "qwenaudio-lite")
TEXT_DECODERS = ("auto", "glm-4-9b", "glm4v")
QUANTIZE = (None, "none", "int8")
DTYPES = {"auto": None, "float32": torch.float32, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class MultiModalConfig:
    """Which parts to load and how. Names select the checkpoint's own modules ("auto" = as the
    checkpoint says); None for an encoder skips loading it. `quantize`: None or "int8"
    (weight-only, Linear layers)."""
    vision_encoder: str | None = "auto"
    audio_encoder: str | None = "auto"
    text_decoder: str = "auto"
    quantize: str | None = None
    dtype: str = "auto"
    device: str = "cpu"

    def __post_init__(self):
        def check(field, value, allowed):
            if value not in allowed:
                shown = ", ".join(repr(a) for a in allowed)
                raise ValueError(f"MultiModalConfig.{field}={value!r} is not supported; use one of {shown}")
        check("vision_encoder", self.vision_encoder, VISION_ENCODERS + (None,))
        check("audio_encoder", self.audio_encoder, AUDIO_ENCODERS + (None,))
        check("text_decoder", self.text_decoder, TEXT_DECODERS)
        check("quantize", self.quantize, QUANTIZE)
        check("dtype", self.dtype, tuple(DTYPES))
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"MultiModalConfig.device={self.device!r} is not a torch device") from exc


class AutoGLMModel:
    def __init__(self, model_dir: Path, config: MultiModalConfig, model_config, tokenizer,
                 decoder, vision=None, image_processor=None, audio=None):
        self.model_dir, self.config, self.model_config = model_dir, config, model_config
        self.tokenizer, self.text_decoder = tokenizer, decoder
        self.vision_encoder, self.image_processor, self.audio_encoder = vision, image_processor, audio

    @classmethod
    def from_pretrained(cls, model_dir: str | Path | None = None,
                        config: MultiModalConfig | None = None) -> "AutoGLMModel":
        """Load from a Hugging Face GLM-4.1V directory; None = the embedded default model."""
        from decision.decoder import GlmDecoder
        from decision.quant import quantize_linears
        from .config import ModelConfig
        from .make_checkpoint import ensure_default_checkpoint
        from .tokenizer import GlmTokenizer

        config = config or MultiModalConfig()
        path = Path(model_dir) if model_dir is not None else ensure_default_checkpoint()
        mcfg = ModelConfig.from_dir(path)
        device = torch.device(config.device)
        dtype = DTYPES[config.dtype] or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        tokenizer = GlmTokenizer.from_dir(path)
        decoder = GlmDecoder.from_pretrained(path, dtype=dtype, device=device, config=mcfg)
        vision = processor = None
        if config.vision_encoder is not None:
            from perception.vision.model import VisionTower
            from perception.vision.processor import ImageProcessor
            vision = VisionTower.from_pretrained(path, dtype=dtype, device=device)
            processor = ImageProcessor.from_dir(path)
        audio = None
        if config.audio_encoder not in (None, "auto"):
            # The audio encoder's loader is wired by the audio stage; until then say so.
            raise ValueError(f"audio_encoder={config.audio_encoder!r}: this build has no audio "
                             f"encoder loader for {path}; use audio_encoder=None")
        if config.quantize == "int8":
            quantize_linears(decoder.model)
            if vision is not None:
                quantize_linears(vision)
        return cls(path, config, mcfg, tokenizer, decoder, vision, processor, audio)

    # --- inspection ---------------------------------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        parts = {"vision_encoder": self.vision_encoder, "audio_encoder": self.audio_encoder,
                 "text_decoder": self.text_decoder}
        return {k: v for k, v in parts.items() if v is not None}

    def summary(self) -> str:
        """A table of every sub-module: parameter count, dtype(s) and memory."""
        rows = []
        total_n = total_b = 0
        for comp, module in self.components().items():
            n, b, dt = _stats(module)
            rows.append((comp, type(module).__name__, n, dt, b))
            total_n, total_b = total_n + n, total_b + b
            for name, child in _submodules(module):
                cn, cb, cdt = _stats(child)
                rows.append(("  " + name, type(child).__name__, cn, cdt, cb))
        rows.append(("total", "", total_n, "", total_b))
        head = ("module", "type", "params", "dtype", "memory")
        table = [head] + [(r[0], r[1], f"{r[2]:,}", r[3], _fmt_bytes(r[4])) for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(5)]
        line = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) if i == 2 else c.ljust(w)
                                     for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        sep = "-" * len(line(head))
        title = f"AutoGLMModel from {self.model_dir} (quantize={self.config.quantize})"
        return "\n".join([title, sep, line(head), sep] + [line(r) for r in table[1:-1]]
                         + [sep, line(table[-1])])

    # --- generation ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, messages: Sequence[dict] | str, images: Sequence[Any] = (),
                 max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, enable_thinking: bool | None = None, seed: int | None = None,
                 skip_special_tokens: bool = True, content_format: str = "openai") -> str:
        ids = self.generate_ids(messages, images, max_new_tokens, temperature, top_p, top_k,
                                enable_thinking, seed, content_format)
        eos = set(self.tokenizer.eos_token_ids)
        if ids and ids[-1] in eos:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    @torch.no_grad()
    def generate_ids(self, messages: Sequence[dict] | str, images: Sequence[Any] = (),
                     max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                     top_k: int = 0, enable_thinking: bool | None = None, seed: int | None = None,
                     content_format: str = "openai") -> list[int]:
        from decision.generate import generate_ids

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        embeds, positions, rope_delta = self._prompt_inputs(messages, images, enable_thinking,
                                                            content_format)
        return generate_ids(self.text_decoder, embeds, positions, rope_delta, max_new_tokens,
                            self.tokenizer.eos_token_ids, temperature, top_p, top_k, seed)

    @torch.no_grad()
    def continuation_logits(self, messages: Sequence[dict] | str, images: Sequence[Any],
                            ids: Sequence[int], enable_thinking: bool | None = None,
                            content_format: str = "openai") -> torch.Tensor:
        """Logits [len(ids), vocab] the model gives each of `ids` after the prompt and the
        ids before it (decision.generate.continuation_logits)."""
        from decision.generate import continuation_logits

        embeds, positions, rope_delta = self._prompt_inputs(messages, images, enable_thinking,
                                                            content_format)
        return continuation_logits(self.text_decoder, embeds, positions, rope_delta, ids)

    def _prompt_inputs(self, messages, images, enable_thinking, content_format):
        """The prompt as the decoder takes it: embeddings (images merged), mrope positions
        [3, N] and the rope delta of the tokens after it."""
        from decision.fusion import merge_image_embeddings, mrope_positions
        from .prompt import build_prompt

        processed = self._preprocess(images)
        counts = [p.num_tokens for p in processed]
        prompt = build_prompt(self.tokenizer, messages, counts, enable_thinking=enable_thinking,
                              content_format=content_format)
        dec = self.text_decoder
        device = dec.lm_head.weight.device
        ids = torch.tensor(prompt.ids, device=device)
        embeds = dec.embed(ids)
        image_id = self.model_config.image_token_id
        if processed:
            feats = self.vision_encoder.encode(processed)
            embeds = merge_image_embeddings(embeds, ids, image_id, feats)
        pos = mrope_positions(prompt.ids, image_id, [p.grid_thw for p in processed],
                              self.model_config.vision.spatial_merge_size)
        return embeds, pos.ids.to(device), pos.rope_delta

    def _preprocess(self, images: Sequence[Any]):
        if not images:
            return []
        if self.vision_encoder is None:
            raise ValueError("images given but the model was loaded with vision_encoder=None")
        from PIL import Image
        out = []
        for im in images:
            if isinstance(im, (str, Path)):
                im = Image.open(im)
            elif isinstance(im, (bytes, bytearray)):
                from perception.vision.processor import decode_image
                im = decode_image(bytes(im))
            out.append(self.image_processor.preprocess(im))
        return out


def _submodules(module: nn.Module):
    """Direct children; a ModuleList of identical blocks is summarised as one row per block."""
    for name, child in module.named_children():
        if isinstance(child, nn.ModuleList):
            for i, block in enumerate(child):
                yield f"{name}.{i}", block
        elif name == "model":  # GlmDecoder.model: list its parts directly
            yield from _submodules(child)
        else:
            yield name, child


def _stats(module: nn.Module) -> tuple[int, int, str]:
    seen, n, b, dtypes = set(), 0, 0, []
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen or t.device.type == "meta":
            continue
        seen.add(id(t))
        if t.is_floating_point() or t.dtype == torch.int8:
            n += t.numel()
            b += t.numel() * t.element_size()
            name = str(t.dtype).replace("torch.", "")
            if name not in dtypes:
                dtypes.append(name)
    return n, b, "/".join(dtypes)


def _fmt_bytes(b: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{b} B"
        b /= 1024
    return f"{b:.1f} GiB"
