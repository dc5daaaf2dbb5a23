"""GLM tokenizer: tokenizer.json through the `tokenizers` library, special tokens by name.

Ids of special tokens are always read from the tokenizer itself (never hard-coded), so a
checkpoint whose vocabulary differs from the published one still works.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer

from .token_cache import MIN_CHARS, PieceCache

# Special tokens GLM-4.1V uses, by name. Which of them exist is read from tokenizer.json.
GMASK, SOP = "[gMASK]", "<sop>"
SYSTEM, USER, ASSISTANT, OBSERVATION = "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"
BEGIN_OF_IMAGE, IMAGE, END_OF_IMAGE = "<|begin_of_image|>", "<|image|>", "<|end_of_image|>"
BEGIN_OF_VIDEO, VIDEO, END_OF_VIDEO = "<|begin_of_video|>", "<|video|>", "<|end_of_video|>"
ENDOFTEXT = "<|endoftext|>"
THINK, END_THINK, ANSWER, END_ANSWER = "<think>", "</think>", "<answer>", "</answer>"

SPECIAL_TOKEN_NAMES = (
    ENDOFTEXT, "[MASK]", GMASK, "[sMASK]", SOP, "<eop>", SYSTEM, USER, ASSISTANT, OBSERVATION,
    BEGIN_OF_IMAGE, END_OF_IMAGE, BEGIN_OF_VIDEO, END_OF_VIDEO, IMAGE, VIDEO,
)
# Reasoning tags: ordinary (non-special) added tokens, so decoding keeps them as text.
TAG_TOKEN_NAMES = (THINK, END_THINK, ANSWER, END_ANSWER)
# GLM-4.1V's generation_config stops on these; used when a checkpoint has no generation_config.
DEFAULT_STOP_NAMES = (ENDOFTEXT, USER, OBSERVATION)


class TokenizerError(ValueError):
    """tokenizer.json is missing or lacks a token the model needs."""


class GlmTokenizer:
    def __init__(self, tokenizer: Tokenizer, chat_template: str | None = None,
                 eos_token_ids: Sequence[int] | None = None):
        self._tok = tokenizer
        self.chat_template = chat_template
        pieces = PieceCache(tokenizer)
        self._pieces = pieces if pieces.enabled else None
        names = SPECIAL_TOKEN_NAMES + TAG_TOKEN_NAMES
        self.special: dict[str, int] = {
            n: i for n in names if (i := tokenizer.token_to_id(n)) is not None}
        if eos_token_ids:
            self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
        else:
            self.eos_token_ids = tuple(self.special[n] for n in DEFAULT_STOP_NAMES if n in self.special)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "GlmTokenizer":
        d = Path(model_dir)
        path = d / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{path}: no tokenizer.json in the model directory")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise TokenizerError(f"{path}: cannot be read by `tokenizers` ({exc})") from exc
        return cls(tok, chat_template=read_chat_template(d), eos_token_ids=read_eos_ids(d))

    # --- ids ------------------------------------------------------------------------------
    def token_id(self, name: str) -> int | None:
        return self._tok.token_to_id(name)

    def require(self, name: str) -> int:
        i = self._tok.token_to_id(name)
        if i is None:
            raise TokenizerError(f"the tokenizer has no {name!r} token, which this model needs")
        return i

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    # --- text -----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text become their ids. A long
        text is put together from cached pieces (modelcore.token_cache): the same ids."""
        if self._pieces is not None and len(text) >= MIN_CHARS:
            return self._pieces.encode(text)
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    @property
    def backend(self) -> Tokenizer:
        return self._tok


def read_chat_template(model_dir: Path) -> str | None:
    """The checkpoint's own jinja template: chat_template.jinja, else tokenizer_config.json."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    cfg = model_dir / "tokenizer_config.json"
    if cfg.is_file():
        tpl = json.loads(cfg.read_text()).get("chat_template")
        if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
            tpl = next((t["template"] for t in tpl if t.get("name") == "default"), None)
        if isinstance(tpl, str):
            return tpl
    return None


def read_eos_ids(model_dir: Path) -> tuple[int, ...]:
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return ()
    eos = json.loads(path.read_text()).get("eos_token_id")
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))
