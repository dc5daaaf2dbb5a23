"""Split streamed model text into reasoning (inside <think>...</think>) and the answer.

The splitter is incremental: text arrives in arbitrary pieces, and a tag may be cut anywhere
("</thi" + "nk>"), so any tail that could still become a tag is held back until the next piece
decides it. Three situations it must handle:
- the chat template already opened the thinking block in the prompt (GLM-4.1V-Thinking's
  generation prompt may end with "<think>"): the output starts inside the reasoning
  (``start_in_reasoning=True``);
- the model opens it itself: leading whitespace then "<think>";
- the model never closes it (max_tokens hit, or it just never does): everything after the
  opening is reasoning and the answer is empty; `flush()` releases held-back text.
Text after "</think>" is the answer, kept verbatim (including the agent's <answer> tags and the
newline GLM puts after "</think>"), so that the answer field is exactly the model's answer text.

`ReasoningStepCounter` implements ``max_reasoning_steps``. A *step* is one non-blank line of
reasoning: a line break ends a step if the line had any non-whitespace text. Lines are what
the GLM thinking models emit one thought per; counting tokens would cut mid-sentence, and
counting paragraphs (blank-line separated) lets a single step run for hundreds of tokens.
When the limit is reached the gateway closes the block itself (see generation.py).
"""
from __future__ import annotations

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

_START, _REASONING, _CONTENT = "start", "reasoning", "content"


class ReasoningSplitter:
    def __init__(self, start_in_reasoning: bool = False,
                 open_tag: str = OPEN_TAG, close_tag: str = CLOSE_TAG):
        self._open, self._close = open_tag, close_tag
        self._state = _REASONING if start_in_reasoning else _START
        self._held = ""
        self.saw_close = False

    @property
    def in_reasoning(self) -> bool:
        return self._state == _REASONING

    def push(self, text: str) -> tuple[str, str]:
        """Return (reasoning_delta, content_delta) for the new text."""
        reasoning, content = [], []
        buf = self._held + text
        self._held = ""
        while buf:
            if self._state == _START:
                stripped = buf.lstrip()
                if stripped.startswith(self._open):
                    self._state = _REASONING
                    buf = stripped[len(self._open):]
                elif self._open.startswith(stripped):  # only whitespace or a partial "<think"
                    self._held = buf
                    buf = ""
                else:
                    self._state = _CONTENT
            elif self._state == _REASONING:
                i = buf.find(self._close)
                if i != -1:
                    reasoning.append(buf[:i])
                    buf = buf[i + len(self._close):]
                    self._state, self.saw_close = _CONTENT, True
                else:
                    keep = _partial_suffix(buf, self._close)
                    reasoning.append(buf[:len(buf) - keep])
                    self._held = buf[len(buf) - keep:]
                    buf = ""
            else:
                content.append(buf)
                buf = ""
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        if self._state == _REASONING:
            return held, ""
        return "", held


def _partial_suffix(buf: str, tag: str) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of `tag`."""
    for k in range(min(len(tag) - 1, len(buf)), 0, -1):
        if buf.endswith(tag[:k]):
            return k
    return 0


class ReasoningStepCounter:
    """Counts completed reasoning steps (non-blank lines); `push` says when the limit is met."""

    def __init__(self, max_steps: int | None):
        self.max_steps = max_steps
        self.steps = 0
        self._line_has_text = False

    def push(self, reasoning_text: str) -> bool:
        for ch in reasoning_text:
            if ch == "\n":
                if self._line_has_text:
                    self.steps += 1
                self._line_has_text = False
            elif not ch.isspace():
                self._line_has_text = True
        return self.limit_reached

    @property
    def limit_reached(self) -> bool:
        return self.max_steps is not None and self.steps >= self.max_steps
