"""The GLM-4 text decoder of GLM-4.1V (`model.language_model.*` + `lm_head`).

Three separate entry points so fusion can run between them and an engine can drive them:
    embed(ids [N]) -> [N, H]
    forward(embeds [N, H], positions [3, N], kv) -> hidden [N, H]   (final norm applied)
    logits(hidden [M, H]) -> [M, vocab]
Tokens are flattened (N = all new tokens of the step); the KV cache object decides which
earlier tokens each one attends to, see decision/kv_cache.py.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from modelcore.checkpoint import CheckpointError, CheckpointReader, load_module
from modelcore.config import ConfigError, ModelConfig, TextConfig
from modelcore.layers import FusedGateUpMLP, Linear, RMSNorm, add_norm_pair

from .kv_cache import ContiguousKVCache, KVCache
from .rope import MRope

TEXT_PREFIX = "model.language_model."
LM_HEAD = "lm_head.weight"
QKV_PARTS = ("q_proj", "k_proj", "v_proj")


class Attention(nn.Module):
    """GQA with qkv bias. The checkpoint's q/k/v projections are one [Hq + 2 Hkv] x D
    projection here (concatenated at load), so a decode step reads them in one GEMV."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        if self.heads % self.kv_heads:
            raise ConfigError(f"num_attention_heads {self.heads} is not a multiple of "
                              f"num_key_value_heads {self.kv_heads}")
        h = cfg.hidden_size
        self.qkv_proj = Linear(h, (self.heads + 2 * self.kv_heads) * self.head_dim, bias=True)
        self.o_proj = Linear(self.heads * self.head_dim, h, bias=False)

    def forward(self, x, cos, sin, kv: KVCache, layer: int):
        out = kv.attend_qkv(layer, self.qkv_proj(x), cos, sin, self.heads)
        return self.o_proj(out.reshape(x.shape[0], self.heads * self.head_dim))


class DecoderLayer(nn.Module):
    """Sandwich norms: each sub-block's output is normalised again before the residual add.

    Takes the residual stream x and its normalised copy h (this layer's input_layernorm,
    applied by the previous layer); returns both for the next layer, whose input norm
    (`next_norm`) is fused with this layer's last residual add.
    """

    def __init__(self, cfg: TextConfig):
        super().__init__()
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(h, eps)
        self.self_attn = Attention(cfg)
        self.post_self_attn_layernorm = RMSNorm(h, eps)
        self.post_attention_layernorm = RMSNorm(h, eps)
        self.mlp = FusedGateUpMLP(h, cfg.intermediate_size, cfg.hidden_act)
        self.post_mlp_layernorm = RMSNorm(h, eps)

    def forward(self, x, h, cos, sin, kv: KVCache, layer: int, next_norm: RMSNorm):
        a = self.self_attn(h, cos, sin, kv, layer)
        x, h = add_norm_pair(x, a, self.post_self_attn_layernorm, self.post_attention_layernorm)
        return add_norm_pair(x, self.mlp(h), self.post_mlp_layernorm, next_norm)


class TextModel(nn.Module):
    """Parameter names mirror `model.language_model.*` so the checkpoint loads by name."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class GlmDecoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        cfg = config.text
        self.model = TextModel(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rope = MRope(cfg)

    # --- the three entry points -------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(ids)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, kv: KVCache) -> torch.Tensor:
        if positions.dim() != 2 or positions.shape[0] != 3 or positions.shape[1] != embeds.shape[0]:
            raise ValueError(f"positions must be [3, {embeds.shape[0]}], got {tuple(positions.shape)}")
        cos, sin = self.rope.cos_sin(positions, embeds.dtype)  # once per step, shared by all layers
        layers = self.model.layers
        x, h = embeds, layers[0].input_layernorm(embeds)
        for i, layer in enumerate(layers):
            next_norm = layers[i + 1].input_layernorm if i + 1 < len(layers) else self.model.norm
            x, h = layer(x, h, cos, sin, kv, i, next_norm)
        kv.commit(embeds.shape[0])
        return h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    # --- helpers ------------------------------------------------------------------------
    def new_cache(self, max_len: int, batch: int = 1) -> ContiguousKVCache:
        cfg = self.config.text
        p = self.lm_head.weight
        return ContiguousKVCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim,
                                 max_len, batch=batch, dtype=p.dtype, device=p.device)

    def fused_from_checkpoint(self) -> dict[str, list[str]]:
        """Names under `model.language_model.` of fused tensors -> the checkpoint's parts."""
        out = {}
        for name, _ in self.model.named_parameters():
            if ".self_attn.qkv_proj." in name:
                out[name] = [name.replace("qkv_proj", p) for p in QKV_PARTS]
        return out

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The weights under the checkpoint's (Hugging Face) names; fused tensors are split
        back into views, nothing is copied."""
        text = self.config.text
        sizes = [text.num_attention_heads * text.head_dim] + [text.num_key_value_heads * text.head_dim] * 2
        fused = self.fused_from_checkpoint()
        out = {}
        for name, t in self.model.state_dict().items():
            parts = t.split(sizes, dim=0) if name in fused else [t]
            for part_name, part in zip(fused.get(name, [name]), parts):
                out[TEXT_PREFIX + part_name] = part
        out[LM_HEAD] = self.lm_head.weight
        return out

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        self.rope.to(self.lm_head.weight.device)
        return out

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu",
                        config: ModelConfig | None = None) -> "GlmDecoder":
        """Load only the decoder's tensors (never `model.visual.*`) from an HF checkpoint."""
        config = config or ModelConfig.from_dir(model_dir)
        reader = CheckpointReader(model_dir)
        with torch.device("meta"):  # no allocation until the real tensors are assigned
            model = cls(config)
        load_module(model.model, reader, TEXT_PREFIX, dtype=dtype, device=device,
                    concat=model.fused_from_checkpoint())
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        else:
            if LM_HEAD not in reader:
                raise CheckpointError(f"{reader.dir}: tensor {LM_HEAD!r} is missing and "
                                      f"tie_word_embeddings is false")
            load_module(model.lm_head, reader, "lm_head.", dtype=dtype, device=device)
        model.rope = MRope(config.text, device=device)
        return model.eval()
