"""Whisper's encoder and decoder in torch, with Hugging Face's module names.

The attribute names equal the tensor names under `model.encoder.` / `model.decoder.` of a
Hugging Face Whisper checkpoint, so weights load by name with no mapping table. Dropout and
layer-drop are training-only and absent. The output projection is tied to the token
embedding, as in every Whisper checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import WhisperConfig


def _activation(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_new":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.relu


class WhisperAttention(nn.Module):
    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)   # Whisper has no key bias
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def key_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.k_proj(x)), self.split(self.v_proj(x))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               causal: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.split(self.q_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = WhisperAttention(d, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.act = _activation(cfg.activation_function)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.self_attn_layer_norm(h)
        k, v = self.self_attn.key_value(x)
        h = h + self.self_attn.attend(x, k, v)
        return h + self.fc2(self.act(self.fc1(self.final_layer_norm(h))))


class WhisperEncoder(nn.Module):
    """log-mel [B, n_mels, T] -> states [B, T/2, d_model]; T = 3000 for a Whisper window.

    Shorter T (a trimmed last window) uses the first T/2 positions; Whisper was trained on
    full windows only, so that is an opt-in speed trade (AudioPipeline(trim_last_window=True)).
    """

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        d = cfg.d_model
        self.conv1 = nn.Conv1d(cfg.num_mel_bins, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(cfg.max_source_positions, d)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        h = h + self.embed_positions.weight[: h.shape[1]]
        for layer in self.layers:
            h = layer(h)
        return self.layer_norm(h)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = WhisperAttention(d, cfg.decoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = WhisperAttention(d, cfg.decoder_attention_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.decoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.decoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.act = _activation(cfg.activation_function)

    def forward(self, h, cross_k, cross_v, past_k=None, past_v=None):
        x = self.self_attn_layer_norm(h)
        k, v = self.self_attn.key_value(x)
        if past_k is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        mask = None
        if past_k is not None:
            # New rows see every cached position and the new ones up to themselves. Built from
            # aranges (not tril(n)) so an exported graph keeps the lengths symbolic.
            n_new, n_all = h.shape[1], k.shape[2]
            rows = torch.arange(n_new, device=h.device)[:, None] + (n_all - n_new)
            mask = torch.arange(n_all, device=h.device)[None, :] <= rows
        h = h + self.self_attn.attend(x, k, v, causal=past_k is None, mask=mask)
        h = h + self.encoder_attn.attend(self.encoder_attn_layer_norm(h), cross_k, cross_v)
        h = h + self.fc2(self.act(self.fc1(self.final_layer_norm(h))))
        return h, k, v


class WhisperDecoder(nn.Module):
    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        d = cfg.d_model
        self.embed_tokens = nn.Embedding(cfg.vocab_size, d)
        self.embed_positions = nn.Embedding(cfg.max_target_positions, d)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.layer_norm = nn.LayerNorm(d)

    def cross_key_values(self, encoder_states: torch.Tensor) -> torch.Tensor:
        """[n_layers, 2, B, heads, S, head_dim]: computed once per window, reused every step."""
        return torch.stack([torch.stack(layer.encoder_attn.key_value(encoder_states))
                            for layer in self.layers])

    def forward(self, input_ids: torch.Tensor, cross_kv: torch.Tensor,
                past: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        """-> (logits [B, L, vocab], the self-attention cache including these tokens)."""
        offset = 0 if not past else past[0][0].shape[2]
        h = self.embed_tokens(input_ids) + self.embed_positions.weight[offset: offset + input_ids.shape[1]]
        cache = []
        for i, layer in enumerate(self.layers):
            pk, pv = past[i] if past else (None, None)
            h, k, v = layer(h, cross_kv[i, 0], cross_kv[i, 1], pk, pv)
            cache.append((k, v))
        logits = self.layer_norm(h) @ self.embed_tokens.weight.T
        return logits, cache


class DecoderStep(nn.Module):
    """Decoder step for ONNX export, the self-attention cache passed in and out as one tensor.

    (input_ids [1, L], cross_kv, past [n_layers, 2, 1, heads, P, head_dim]; P may be 0)
    -> (logits of the last position [1, vocab], present [n_layers, 2, 1, heads, P + L, head_dim])
    """

    def __init__(self, decoder: WhisperDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids, cross_kv, past):
        d = self.decoder
        offset = past.shape[4]
        h = d.embed_tokens(input_ids) + d.embed_positions.weight[offset: offset + input_ids.shape[1]]
        present = []
        for i, layer in enumerate(d.layers):
            h, k, v = layer(h, cross_kv[i, 0], cross_kv[i, 1], past[i, 0], past[i, 1])
            present.append(torch.stack([k, v]))
        logits = d.layer_norm(h[:, -1]) @ d.embed_tokens.weight.T
        return logits, torch.stack(present)


class CrossKV(nn.Module):
    def __init__(self, decoder: WhisperDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, encoder_states: torch.Tensor) -> torch.Tensor:
        return self.decoder.cross_key_values(encoder_states)
