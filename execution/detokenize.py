"""Incremental detokenisation and stop strings.

`IncrementalDetokenizer` turns a growing list of token ids into text deltas that are always
whole characters. With byte-level BPE (GLM-4's tokenizer) one character may span several
tokens: a CJK character is 3 UTF-8 bytes and an emoji 4, often split across tokens, and
decoding a token alone yields U+FFFD for the partial bytes. We therefore decode a small window
(the tokens since the last emission plus the ones before them, for context) and emit only when
the window's text has grown and does not end in U+FFFD; otherwise we wait for the next token.
Decoding the window, not the whole output, keeps each step O(window) instead of O(length).

`StopStringMatcher` cuts the text at the first stop string and holds back any tail that could
still become one, so a client never sees the first half of a stop string that later completes.
"""
from __future__ import annotations

from typing import Callable, Iterable, Protocol, Sequence

REPLACEMENT = "\ufffd"


class _Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


def decode_fn(tokenizer: _Decoder) -> Callable[[Sequence[int]], str]:
    """A `ids -> text` function over a `tokenizers.Tokenizer` or any object with the same
    ``decode(ids, skip_special_tokens=)``; special ids are filtered by the detokenizer itself."""
    def _decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=False)
    return _decode


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[Sequence[int]], str],
                 skip_ids: Iterable[int] = (), context_ids: Sequence[int] = ()):
        """`skip_ids`: ids never shown (special tokens such as <|user|>, <|endoftext|>).
        `context_ids`: last few prompt ids, decoded only as context so that tokenizers whose
        decoder depends on the previous token (SentencePiece's leading space) start right."""
        self._decode = decode
        self._skip = frozenset(skip_ids)
        self._ids: list[int] = list(context_ids)
        self._prefix = 0  # start of the context window
        self._read = len(self._ids)  # ids before this are already emitted
        self.num_tokens = 0  # generated ids pushed, including skipped ones

    def push(self, token_ids: Iterable[int]) -> str:
        """Add generated ids; return the newly complete text (maybe empty)."""
        for t in token_ids:
            self.num_tokens += 1
            if t not in self._skip:
                self._ids.append(int(t))
        if len(self._ids) == self._read:
            return ""
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        full_text = self._decode(self._ids[self._prefix:])
        if len(full_text) <= len(prefix_text) or full_text.endswith(REPLACEMENT):
            return ""  # an incomplete UTF-8 sequence (or a token that adds no text yet)
        delta = full_text[len(prefix_text):]
        self._prefix, self._read = self._read, len(self._ids)
        return delta

    def flush(self) -> str:
        """At the end of generation: whatever is left, even a dangling partial character
        (shown as U+FFFD, as every tokenizer's plain decode would show it)."""
        if len(self._ids) == self._read:
            return ""
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        full_text = self._decode(self._ids[self._prefix:])
        self._prefix, self._read = self._read, len(self._ids)
        return full_text[len(prefix_text):] if full_text.startswith(prefix_text) else full_text


class StopStringMatcher:
    """Feed text deltas; get back what may be shown now and whether a stop string was hit."""

    def __init__(self, stop: Sequence[str]):
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self._stop:
            return text
        buf = self._held + text
        first, which = -1, None
        for s in self._stop:
            i = buf.find(s)
            if i != -1 and (first == -1 or i < first):
                first, which = i, s
        if first != -1:
            self.stopped, self.matched, self._held = True, which, ""
            return buf[:first]
        keep = self._longest_partial_suffix(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep]

    def flush(self) -> str:
        """Generation ended without a stop string: release what was held back."""
        out, self._held = self._held, ""
        return "" if self.stopped else out

    def _longest_partial_suffix(self, buf: str) -> int:
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:k]):
                    best = k
                    break
        return best
