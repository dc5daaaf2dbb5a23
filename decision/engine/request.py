"""One request's state inside the engine: tokens, positions, modality inputs, KV blocks."""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .block_manager import block_key
from .sampling import SamplerState, SamplingParams


class RequestStatus(enum.Enum):
    WAITING_FOR_MODALITIES = "waiting_for_modalities"
    WAITING = "waiting"            # ready, queued for (re)admission
    RUNNING = "running"            # holds KV blocks, prefilling or decoding
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class ModalityInput:
    """Embedding rows a request declares: they replace the prompt rows at `positions`.

    key: the name the stage uses when the embeddings arrive (e.g. "image0").
    positions: prompt indices of the placeholder tokens, in the order of the rows.
    content_hash: identifies the content (e.g. a hash of the image bytes) for prefix caching;
    when absent the engine hashes the embeddings when they arrive.
    """

    key: str
    positions: Sequence[int]
    content_hash: str | None = None


@dataclass(frozen=True)
class TokenRecord:
    """What one step produced for one request: a token, or the end of the request."""

    request_id: str
    index: int                   # the engine's integer id of the request
    token_id: int                # -1 when the record carries no token (cancel, error)
    logprob: float | None
    top_logprobs: tuple[tuple[int, float], ...]
    finished: bool
    finish_reason: FinishReason | None = None
    error: str | None = None


class Request:
    def __init__(self, request_id: str, index: int, prompt_ids: list[int],
                 params: SamplingParams, sampler: SamplerState, positions: torch.Tensor,
                 modalities: Sequence[ModalityInput], inputs_embeds: torch.Tensor | None,
                 cacheable: bool, block_size: int, cache_salt: str | None = None):
        self.request_id = request_id
        self.index = index
        self.prompt_ids = prompt_ids
        self.output_ids: list[int] = []
        self.params = params
        self.sampler = sampler
        # [3, P] long, CPU; None: the text layout, position = index on all three rows (built
        # when a step needs it: four torch calls at admission cost a text request ~0.2 ms on
        # the 2-core host, run cold after the model's compute).
        self.positions = positions
        self.rope_delta = 0 if positions is None else int(positions.max()) + 1 - len(prompt_ids)
        self.modalities = {m.key: m for m in modalities}
        self.modality_positions = {m.key: torch.as_tensor(list(m.positions), dtype=torch.long)
                                   for m in modalities}
        self.embeddings: dict[str, torch.Tensor] = {}
        # Embeddings that are borrowed views (an shm slot): key -> the callback giving the
        # view back. They stay valid until released: a preempted request recomputes its
        # prompt, image rows included, so a view is held until the request ends (or copied
        # out first, see release_views). On a GPU a view is read once, by its copy to the
        # device (_rows_on); `copied` holds the event that says when that copy is done.
        self.borrowed: dict[str, Callable[[], None]] = {}
        self.copied: dict[str, torch.cuda.Event] = {}
        self.inputs_embeds = inputs_embeds
        self.cacheable = cacheable
        # Roots the key chain: requests with different salts never share blocks.
        self.cache_salt = cache_salt
        self.block_size = block_size
        self.status = (RequestStatus.WAITING_FOR_MODALITIES if modalities
                       else RequestStatus.WAITING)
        self.blocks: list[int] = []
        self.num_computed = 0
        self.num_registered = 0                     # full blocks offered to the prefix cache
        self._keys: list[bytes] = []
        self.cached_prompt_tokens = 0               # prompt tokens served by the prefix cache
        self.cancel_requested = False
        self.finish_reason: FinishReason | None = None
        self.error: str | None = None

    # --- tokens and positions --------------------------------------------------------------
    @property
    def num_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def token_ids(self, start: int, end: int) -> list[int]:
        p = self.num_prompt
        if end <= p:
            return self.prompt_ids[start:end]
        return (self.prompt_ids + self.output_ids)[start:end]

    def position_ids(self, start: int, end: int) -> torch.Tensor:
        """[3, end - start] positions: the prompt's own, then index + rope_delta."""
        p = self.num_prompt
        if self.positions is None:   # text layout: the index itself, prompt or not
            return torch.arange(start, end, dtype=torch.long).expand(3, -1)
        parts = []
        if start < p:
            parts.append(self.positions[:, start:min(end, p)])
        if end > p:
            gen = torch.arange(max(start, p), end, dtype=torch.long) + self.rope_delta
            parts.append(gen.expand(3, -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def embedding_rows(self, start: int, end: int, device: torch.device):
        """(offsets within [start, end), rows on `device`) that replace token embeddings in
        that range."""
        out = []
        if self.inputs_embeds is not None and start < self.num_prompt:
            stop = min(end, self.num_prompt)
            out.append((torch.arange(0, stop - start), self.inputs_embeds[start:stop]))
        for key, pos in self.modality_positions.items():
            sel = (pos >= start) & (pos < end)
            if bool(sel.any()):
                rows = self._rows_on(key, device)
                out.append((pos[sel] - start, rows[sel.to(device)]))
        return out

    def _rows_on(self, key: str, device: torch.device) -> torch.Tensor:
        """The modality's rows on `device`: a host view (an shm slot) is copied there once,
        queued on the stream, and the copy serves later chunks and a recompute too."""
        rows = self.embeddings[key]
        if rows.device != device:
            rows = self.embeddings[key] = rows.to(device, non_blocking=True)
            if key in self.borrowed:   # the slot may go back only once the copy has read it
                done = self.copied[key] = torch.cuda.Event()
                done.record()
        return rows

    # --- modalities --------------------------------------------------------------------------
    def missing_modalities(self) -> list[str]:
        return [k for k in self.modalities if k not in self.embeddings]

    def release_views(self, keep: bool, limit: int | None = None) -> int:
        """Give back borrowed embedding views (at most `limit`); with `keep`, each is first
        copied into memory of its own (the request may still need it). Returns how many."""
        n = 0
        for key in list(self.borrowed):
            if limit is not None and n >= limit:
                break
            release = self.borrowed.pop(key)
            done = self.copied.pop(key, None)
            if done is not None:          # copied to the device: wait until the view was read
                try:
                    done.synchronize()
                except RuntimeError:
                    pass                  # a failed device reads nothing more
            if not keep:
                self.embeddings.pop(key, None)
            elif done is None and key in self.embeddings:   # the rows are still the view
                self.embeddings[key] = self.embeddings[key].clone()
            call_release(release)
            n += 1
        return n

    def content_hash(self, key: str) -> str:
        m = self.modalities[key]
        if m.content_hash is not None:
            return m.content_hash
        emb = self.embeddings[key].detach().to("cpu").contiguous()
        digest = hashlib.blake2b(emb.view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()
        self.modalities[key] = ModalityInput(m.key, m.positions, digest)
        return digest

    # --- prefix-cache keys ---------------------------------------------------------------------
    def block_keys(self, n_blocks: int) -> list[bytes]:
        """Chained keys of the first `n_blocks` full blocks (tokens, positions, modality rows)."""
        bs = self.block_size
        while len(self._keys) < n_blocks:
            b = len(self._keys)
            start, end = b * bs, (b + 1) * bs
            # [3, n] row-major, as for explicit positions (a screenshot request's system-prompt
            # blocks are a text request's too).
            extra = [tuple(range(start, end)) * 3 if self.positions is None
                     else tuple(self.position_ids(start, end).flatten().tolist())]
            for key, pos in self.modality_positions.items():
                sel = ((pos >= start) & (pos < end)).nonzero().flatten().tolist()
                if sel:
                    extra.append((self.content_hash(key), sel[0], sel[-1]))
            prev = self._keys[-1] if self._keys else (
                b"salt:" + self.cache_salt.encode() if self.cache_salt is not None else None)
            self._keys.append(block_key(prev, self.token_ids(start, end), tuple(extra)))
        return self._keys[:n_blocks]


def call_release(release: Callable[[], None] | None) -> None:
    """Give a borrowed view back; a failing release (the slot was reclaimed meanwhile) must not
    take the engine down, and the view is dropped either way."""
    if release is None:
        return
    try:
        release()
    except Exception:
        pass
