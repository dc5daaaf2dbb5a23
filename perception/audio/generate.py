"""Greedy Whisper decoding with timestamps off, following transformers' generate() rules.

The prompt ("initial tokens") is <|startoftranscript|>, a language token (given, from
generation_config.json, or detected from the first decoder step), a task token, then
<|notimestamps|>. Suppressed tokens are masked at every step, `begin_suppress_tokens` at the
first generated step. Generation ends at <|endoftext|> or at the length limit
(generation_config.json's max_length new tokens, capped by the decoder's position table).
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from .config import GenerationSettings
from .errors import AudioModelError


class DecoderSession(Protocol):
    """One window's decoder: `start(prefix)` then `step(token)`, each -> next-token logits [vocab]."""

    def start(self, prefix: list[int]) -> np.ndarray: ...

    def step(self, token: int) -> np.ndarray: ...


def language_token_id(gen: GenerationSettings, language: str) -> int:
    lang = language.lower()
    token = lang if lang.startswith("<|") else f"<|{lang}|>"
    if token not in gen.lang_to_id:
        known = ", ".join(sorted(t.strip("<|>") for t in gen.lang_to_id)) or "none"
        raise AudioModelError(
            f"language {language!r} is not in generation_config.json's lang_to_id (known: {known})")
    return gen.lang_to_id[token]


def detect_language(gen: GenerationSettings, first_logits: Callable[[list[int]], np.ndarray]) -> int:
    """The language token the decoder prefers right after <|startoftranscript|>."""
    logits = first_logits([gen.decoder_start_token_id])
    ids = np.array(sorted(gen.lang_to_id.values()))
    return int(ids[np.argmax(logits[ids])])


def initial_tokens(gen: GenerationSettings, language: str | None, task: str | None,
                   first_logits: Callable[[list[int]], np.ndarray]) -> list[int]:
    language = language if language is not None else gen.language
    task = task if task is not None else gen.task
    tokens: list[int | None] = [gen.decoder_start_token_id]
    # Old checkpoints put the prompt in forced_decoder_ids ([[1, lang], [2, task], ...]);
    # like transformers, they count only when neither language nor task is given.
    if task is None and language is None and gen.forced_decoder_ids:
        forced = sorted(gen.forced_decoder_ids)
        for position, token in forced:
            if position != len(tokens):
                break
            tokens.append(token)
    lang_undefined = len(tokens) <= 1 or tokens[1] is None
    lang_id = None
    if language is not None:
        lang_id = language_token_id(gen, language)
    elif gen.lang_to_id and lang_undefined:
        lang_id = detect_language(gen, first_logits)
    if lang_id is not None:
        if len(tokens) > 1:
            tokens[1] = lang_id
        else:
            tokens.append(lang_id)
    if task is not None:
        if task not in ("transcribe", "translate") or task not in gen.task_to_id:
            raise AudioModelError(f"task {task!r} is not in generation_config.json's task_to_id")
        task_ids = set(gen.task_to_id.values())
        tokens = [t for t in tokens if t not in task_ids] + [gen.task_to_id[task]]
    elif language is not None and gen.task_to_id:
        if not any(t in gen.task_to_id.values() for t in tokens):
            tokens.append(gen.task_to_id["transcribe"])
    if gen.no_timestamps_token_id is not None and tokens[-1] != gen.no_timestamps_token_id:
        tokens.append(gen.no_timestamps_token_id)
    return [int(t) for t in tokens if t is not None]


def max_new_tokens(gen: GenerationSettings, n_initial: int, max_target_positions: int) -> int:
    room = max_target_positions - n_initial
    if gen.max_new_tokens is not None:
        return max(0, min(int(gen.max_new_tokens), room))
    return max(0, min(gen.max_length, room))


def greedy_decode(session: DecoderSession, gen: GenerationSettings, prefix: list[int],
                  max_new: int) -> list[int]:
    """Generated token ids after `prefix`, <|endoftext|> excluded."""
    suppress = np.array(gen.suppress_tokens, dtype=np.int64)
    begin_suppress = np.array(gen.begin_suppress_tokens, dtype=np.int64)
    out: list[int] = []
    if max_new <= 0:
        return out
    logits = session.start(prefix)
    for i in range(max_new):
        logits = np.array(logits, dtype=np.float32, copy=True)
        if suppress.size:
            logits[suppress] = -np.inf
        if i == 0 and begin_suppress.size:
            logits[begin_suppress] = -np.inf
        token = int(np.argmax(logits))
        if token == gen.eos_token_id:
            break
        out.append(token)
        if i + 1 < max_new:
            logits = session.step(token)
    return out
