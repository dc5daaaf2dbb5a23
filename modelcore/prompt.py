"""Chat messages -> GLM-4.1V prompt text -> token ids with image placeholders expanded.

The checkpoint's own jinja chat template is rendered when it has one (in the same jinja
setup transformers uses, so the text is identical); otherwise the project's built-in
GLM-4.1V template (modelcore/data/chat_template.jinja).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from .tokenizer import BEGIN_OF_IMAGE, END_OF_IMAGE, IMAGE, GlmTokenizer

BUILTIN_TEMPLATE_PATH = Path(__file__).parent / "data" / "chat_template.jinja"
IMAGE_PLACEHOLDER = BEGIN_OF_IMAGE + IMAGE + END_OF_IMAGE
IMAGE_PART_TYPES = ("image", "image_url", "input_image", "image_pil")
CONTENT_FORMATS = ("openai", "string")


class PromptError(ValueError):
    """Messages that cannot be turned into a prompt (bad role, bad part, image count off)."""


def builtin_template() -> str:
    return BUILTIN_TEMPLATE_PATH.read_text()


@lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise PromptError(f"chat template: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    # trim_blocks/lstrip_blocks as transformers sets them: templates are written for that.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def _is_image_part(part: dict) -> bool:
    return part.get("type") in IMAGE_PART_TYPES or (
        "type" not in part and any(k in part for k in ("image", "image_url")))


def normalize_messages(messages: Sequence[dict]) -> list[dict]:
    """Validate roles/parts; image parts of any OpenAI spelling become {"type": "image"}."""
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise PromptError(f"message {i}: must be an object with a 'role'")
        role = msg["role"]
        if role == "developer":   # OpenAI's newer name for the system role
            msg = {**msg, "role": "system"}
        elif role not in ("system", "user", "assistant", "observation", "tool"):
            raise PromptError(f"message {i}: unknown role {role!r}")
        content = msg.get("content")
        if content is None:
            content = ""
        if isinstance(content, str):
            out.append({**msg, "content": content})
            continue
        if not isinstance(content, list):
            raise PromptError(f"message {i}: content must be a string or a list of parts")
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                parts.append({"type": "text", "text": part})
            elif isinstance(part, dict) and _is_image_part(part):
                parts.append({"type": "image"})
            elif isinstance(part, dict) and part.get("type") == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise PromptError(f"message {i} part {j}: unsupported content part {kind!r}")
        out.append({**msg, "content": parts})
    return out


def flatten_to_string(messages: Sequence[dict]) -> list[dict]:
    """vLLM's `--chat-template-content-format string`: list content becomes one string,
    each image placeholder followed by a newline first, then the texts joined by newlines."""
    out = []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, list):
            images = [IMAGE_PLACEHOLDER for p in content if p["type"] == "image"]
            texts = [p["text"] for p in content if p["type"] == "text"]
            content = "\n".join(images + ["\n".join(texts)]) if images else "\n".join(texts)
        out.append({**msg, "content": content})
    return out


def render(messages: Sequence[dict], template: str | None = None, add_generation_prompt: bool = True,
           enable_thinking: bool | None = None, content_format: str = "openai",
           **template_kwargs: Any) -> str:
    """The prompt text, exactly as the chat template renders it."""
    if content_format not in CONTENT_FORMATS:
        raise PromptError(f"content_format must be one of {CONTENT_FORMATS}, got {content_format!r}")
    msgs = normalize_messages(messages)
    if content_format == "string":
        msgs = flatten_to_string(msgs)
    kwargs = dict(template_kwargs)
    if enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    return _compile(template or builtin_template()).render(
        messages=msgs, add_generation_prompt=add_generation_prompt, **kwargs)


def count_images(messages: Sequence[dict]) -> int:
    return sum(1 for m in normalize_messages(messages) if isinstance(m["content"], list)
               for p in m["content"] if p["type"] == "image")


@dataclass(frozen=True)
class PromptIds:
    ids: list[int]
    text: str
    image_token_counts: tuple[int, ...]


def expand_image_tokens(ids: Sequence[int], image_token_id: int,
                        image_token_counts: Sequence[int]) -> list[int]:
    """Each single image token in `ids` becomes as many copies as that image has tokens.
    list.count / list.index scan in C: a 4000-token agent prompt took ~250 us per request in a
    Python loop over every id, image or not."""
    ids = list(ids)
    n_slots = ids.count(image_token_id)
    if n_slots != len(image_token_counts):
        raise PromptError(f"the prompt has {n_slots} image placeholder(s) but "
                          f"{len(image_token_counts)} image(s) were given")
    if not n_slots:
        return ids
    out: list[int] = []
    start = 0
    for count in image_token_counts:
        at = ids.index(image_token_id, start)
        out += ids[start:at]
        out += [image_token_id] * int(count)
        start = at + 1
    out += ids[start:]
    return out


def build_prompt(tokenizer: GlmTokenizer, messages: Sequence[dict] | str,
                 image_token_counts: Sequence[int] = (), *, template: str | None = None,
                 add_generation_prompt: bool = True, enable_thinking: bool | None = None,
                 content_format: str = "openai") -> PromptIds:
    """Render (messages) or take (a raw prompt string), tokenize, expand image tokens."""
    if isinstance(messages, str):
        text = messages
    else:
        text = render(messages, template or tokenizer.chat_template, add_generation_prompt,
                      enable_thinking, content_format)
    ids = tokenizer.encode(text)
    image_id = tokenizer.require(IMAGE) if image_token_counts else tokenizer.token_id(IMAGE)
    if image_id is not None:
        ids = expand_image_tokens(ids, image_id, image_token_counts)
    elif image_token_counts:
        raise PromptError("images given but the tokenizer has no <|image|> token")
    return PromptIds(ids, text, tuple(int(c) for c in image_token_counts))
