"""Parse and validate an OpenAI chat-completions body into a typed `ChatRequest`.

This layer only checks shape and ranges; it does not fetch or decode media (media.py), render
the prompt or count tokens (prepare.py). Every refusal is an `APIError` naming the field.

Accepted, beyond OpenAI's own fields, as vLLM accepts them: top_k, repetition_penalty,
return_tokens_as_token_ids, chat_template_kwargs.enable_thinking; and the fields the AutoGLM
articles show under ``extra_body``: enable_thinking, return_reasoning, max_reasoning_steps.
Unknown fields are ignored (clients such as LangChain send fields like ``user``), except those
that would change the meaning of the answer if silently dropped (tools, a tool_choice that asks
for a call, n > 1, a JSON response_format): those are refused with a message saying so.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import APIError, invalid, model_not_found

ROLES = ("system", "user", "assistant", "tool", "developer")
# Fields that travel as int32, int64 or float32 to the decision stage: values past these are
# refused here, not failed there.
INT32_MAX, INT64_MIN, INT64_MAX = 2**31 - 1, -2**63, 2**63 - 1
FLOAT32_MAX, FLOAT32_TINY = 3.4028234663852886e38, 1.1754943508222875e-38
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "webm", "m4a", "aac", "opus")
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    url: str  # data: URL, file:// URL or absolute path; resolved by media.py
    param: str  # where it sits in the body, for error messages


@dataclass(frozen=True)
class AudioPart:
    data_b64: str
    format: str
    param: str


ContentPart = Union[TextPart, ImagePart, AudioPart]


@dataclass(frozen=True)
class Message:
    role: str
    # A plain string stays a string so the chat template sees exactly what the client sent.
    content: str | tuple[ContentPart, ...]
    name: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off (vLLM uses -1 or 0)
    max_tokens: int | None = None  # None: up to the context length
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: bool = False
    top_logprobs: int = 0
    return_tokens_as_token_ids: bool = False   # vLLM's: logprobs name tokens "token_id:N"
    logit_bias: tuple[tuple[int, float], ...] = ()   # (token id, bias in [-100, 100])
    stream: bool = False
    include_usage: bool = False
    enable_thinking: bool | None = None  # None: the chat template's default
    return_reasoning: bool = False
    max_reasoning_steps: int | None = None
    extra_template_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return sum(isinstance(p, ImagePart) for m in self.messages if not isinstance(m.content, str)
                   for p in m.content)

    @property
    def has_media(self) -> bool:
        """Any image or audio part (whose decoding is slow enough for a worker thread)."""
        return any(not isinstance(p, TextPart) for m in self.messages
                   if not isinstance(m.content, str) for p in m.content)

    def is_deterministic(self) -> bool:
        """Greedy or seeded: the same request gives the same tokens (what the cache relies on)."""
        return self.temperature == 0.0 or self.seed is not None


@dataclass(frozen=True)
class SchemaLimits:
    served_model_names: tuple[str, ...] = ("autoglm-phone-9b",)
    max_images: int = 10
    max_audios: int = 4


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid(f"Request body must be a JSON object, got {_type_name(body)}",
                      code="invalid_json")
    return body


def parse_chat_request(body: dict[str, Any], limits: SchemaLimits = SchemaLimits()) -> ChatRequest:
    model = body.get("model")
    if model is None:
        model = limits.served_model_names[0]  # vLLM's behaviour: the served model by default
    elif not isinstance(model, str):
        raise _wrong_type("model", "a string", model)
    elif model not in limits.served_model_names:
        raise model_not_found(model)

    messages = _parse_messages(body.get("messages", _MISSING))
    n_images = sum(isinstance(p, ImagePart) for m in messages if not isinstance(m.content, str)
                   for p in m.content)
    if n_images > limits.max_images:
        raise invalid(f"Too many images: the request has {n_images}, the limit is "
                      f"{limits.max_images} per request (--max-images, at most the slots of "
                      "the frames pool).", param="messages", code="too_many_images")
    n_audios = sum(isinstance(p, AudioPart) for m in messages if not isinstance(m.content, str)
                   for p in m.content)
    if n_audios > limits.max_audios:
        raise invalid(f"Too many audio clips: the request has {n_audios}, the limit is "
                      f"{limits.max_audios} per request (at most the slots of the pcm pool).",
                      param="messages", code="too_many_audios")

    n = _opt_int(body, "n", lo=1)
    if n is not None and n != 1:
        raise invalid(f"n={n} is not supported: this server returns exactly one choice per "
                      "request (n=1); send separate requests (with different seeds) instead.",
                      param="n", code="unsupported_n")
    if body.get("tools"):
        raise invalid("Tool calling is not supported by this server; omit 'tools'.",
                      param="tools", code="unsupported_parameter")
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and tool_choice not in ("none", "auto"):
        raise invalid(f"tool_choice {tool_choice!r} asks for a tool call; tool calling is not "
                      "supported by this server (only 'none' or 'auto').", param="tool_choice",
                      code="unsupported_parameter")
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") != "text":
            raise invalid("Only response_format {\"type\": \"text\"} is supported.",
                          param="response_format", code="unsupported_parameter")

    max_tokens = _opt_int(body, "max_completion_tokens", lo=1)
    if max_tokens is None:
        max_tokens = _opt_int(body, "max_tokens", lo=1)

    stream = _opt_bool(body, "stream") or False
    include_usage = False
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise _wrong_type("stream_options", "an object", so)
        if not stream:
            raise invalid("stream_options can only be set when stream is true.",
                          param="stream_options")
        include_usage = _opt_bool(so, "include_usage", prefix="stream_options.") or False

    logprobs = _opt_bool(body, "logprobs") or False
    top_logprobs = _opt_int(body, "top_logprobs", lo=0, hi=MAX_TOP_LOGPROBS)
    if top_logprobs is not None and top_logprobs > 0 and not logprobs:
        raise invalid("top_logprobs requires logprobs to be true.", param="top_logprobs")

    kwargs = body.get("chat_template_kwargs")
    if kwargs is None:
        kwargs = {}
    elif not isinstance(kwargs, dict):
        raise _wrong_type("chat_template_kwargs", "an object", kwargs)
    enable_thinking = _opt_bool(body, "enable_thinking")
    if enable_thinking is None and "enable_thinking" in kwargs:
        enable_thinking = _opt_bool(kwargs, "enable_thinking", prefix="chat_template_kwargs.")
    extra_kwargs = {k: v for k, v in kwargs.items() if k != "enable_thinking"}

    top_k = _opt_int(body, "top_k", lo=-1, hi=INT32_MAX)
    return ChatRequest(
        model=model,
        messages=messages,
        temperature=_opt_float(body, "temperature", 0.0, 2.0, default=1.0),
        top_p=_opt_float(body, "top_p", 0.0, 1.0, default=1.0, lo_open=True, f32=True),
        top_k=0 if top_k in (None, -1) else top_k,
        max_tokens=max_tokens,
        stop=_parse_stop(body.get("stop")),
        seed=_opt_int(body, "seed", lo=INT64_MIN, hi=INT64_MAX),
        presence_penalty=_opt_float(body, "presence_penalty", -2.0, 2.0, default=0.0),
        frequency_penalty=_opt_float(body, "frequency_penalty", -2.0, 2.0, default=0.0),
        repetition_penalty=_opt_float(body, "repetition_penalty", 0.0, math.inf, default=1.0,
                                      lo_open=True, f32=True),
        logprobs=logprobs,
        top_logprobs=top_logprobs or 0,
        return_tokens_as_token_ids=_opt_bool(body, "return_tokens_as_token_ids") or False,
        logit_bias=_parse_logit_bias(body.get("logit_bias")),
        stream=stream,
        include_usage=include_usage,
        enable_thinking=enable_thinking,
        return_reasoning=_opt_bool(body, "return_reasoning") or False,
        max_reasoning_steps=_opt_int(body, "max_reasoning_steps", lo=1),
        extra_template_kwargs=extra_kwargs,
    )


# --- messages -----------------------------------------------------------------------------

_MISSING = object()


def _parse_messages(raw: Any) -> tuple[Message, ...]:
    if raw is _MISSING:
        raise invalid("Missing required field 'messages'.", param="messages")
    if not isinstance(raw, list):
        raise _wrong_type("messages", "a list of message objects", raw)
    if not raw:
        raise invalid("'messages' must contain at least one message.", param="messages")
    return tuple(_parse_message(m, f"messages[{i}]") for i, m in enumerate(raw))


def _parse_message(raw: Any, where: str) -> Message:
    if not isinstance(raw, dict):
        raise _wrong_type(where, "a message object", raw)
    role = raw.get("role")
    if role is None:
        raise invalid(f"Missing required field '{where}.role'.", param=f"{where}.role")
    if not isinstance(role, str) or role not in ROLES:
        raise invalid(f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}.",
                      param=f"{where}.role")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise _wrong_type(f"{where}.name", "a string", name)
    content = raw.get("content", _MISSING)
    if content is _MISSING or content is None:
        if role == "assistant":  # an assistant turn that only made tool calls has no content
            return Message(role, "", name)
        raise invalid(f"Missing required field '{where}.content'.", param=f"{where}.content")
    if isinstance(content, str):
        return Message(role, content, name)
    if not isinstance(content, list):
        raise _wrong_type(f"{where}.content", "a string or a list of content parts", content)
    parts = tuple(_parse_part(p, f"{where}.content[{j}]") for j, p in enumerate(content))
    if role != "user" and any(not isinstance(p, TextPart) for p in parts):
        raise invalid(f"{where}: only user messages may carry images or audio (role is {role}).",
                      param=f"{where}.content")
    return Message(role, parts, name)


def _parse_part(raw: Any, where: str) -> ContentPart:
    if not isinstance(raw, dict):
        raise _wrong_type(where, "a content-part object", raw)
    kind = raw.get("type")
    if kind == "text":
        text = raw.get("text")
        if not isinstance(text, str):
            raise _wrong_type(f"{where}.text", "a string", text)
        return TextPart(text)
    if kind == "image_url":
        img = raw.get("image_url")
        url = img.get("url") if isinstance(img, dict) else img  # some clients send the bare URL
        if not isinstance(url, str) or not url:
            raise invalid(f"{where}.image_url must be an object with a non-empty string 'url'.",
                          param=f"{where}.image_url")
        return ImagePart(url, f"{where}.image_url")
    if kind == "input_audio":
        aud = raw.get("input_audio")
        if not isinstance(aud, dict):
            raise _wrong_type(f"{where}.input_audio", "an object with 'data' and 'format'", aud)
        data, fmt = aud.get("data"), aud.get("format")
        if not isinstance(data, str) or not data:
            raise invalid(f"{where}.input_audio.data must be a non-empty base64 string.",
                          param=f"{where}.input_audio.data")
        if not isinstance(fmt, str) or fmt.lower() not in AUDIO_FORMATS:
            raise invalid(f"{where}.input_audio.format must be one of {', '.join(AUDIO_FORMATS)};"
                          f" got {fmt!r}.", param=f"{where}.input_audio.format")
        return AudioPart(data, fmt.lower(), f"{where}.input_audio")
    raise invalid(f"{where}.type must be 'text', 'image_url' or 'input_audio'; got {kind!r}.",
                  param=f"{where}.type")


def _parse_stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _wrong_type("stop", "a string or a list of strings", raw)
    if any(s == "" for s in items):
        raise invalid("stop strings must not be empty.", param="stop")
    return tuple(dict.fromkeys(items))  # de-duplicated, order kept


def _parse_logit_bias(raw: Any) -> tuple[tuple[int, float], ...]:
    """{"token id": bias}: ids as decimal strings (JSON keys), biases in [-100, 100]."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise _wrong_type("logit_bias", "an object of token id -> bias", raw)
    out = []
    for key, bias in raw.items():
        if not (isinstance(key, str) and key.isdigit()):
            raise invalid(f"logit_bias keys must be token ids (non-negative integers), got "
                          f"{key!r}.", param="logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) \
                or not -100 <= bias <= 100:
            raise invalid(f"logit_bias[{key!r}] must be a number in [-100, 100], got "
                          f"{bias!r}.", param="logit_bias")
        out.append((int(key), float(bias)))
    return tuple(out)


# --- scalar fields ------------------------------------------------------------------------

def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _wrong_type(param: str, expected: str, got: Any) -> APIError:
    return invalid(f"'{param}' must be {expected}, got {_type_name(got)}.", param=param)


def _opt_bool(body: dict, key: str, prefix: str = "") -> bool | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise _wrong_type(prefix + key, "a boolean", v)
    return v


def _opt_int(body: dict, key: str, lo: int | None = None, hi: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    # bool is an int in Python; JSON true is not a number. 2.0 is accepted as 2.
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _wrong_type(key, "an integer", v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise invalid(f"'{key}' must be {rng}, got {v}.", param=key)
    return v


def _opt_float(body: dict, key: str, lo: float, hi: float, *, default: float,
               lo_open: bool = False, f32: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _wrong_type(key, "a number", v)
    v = float(v)
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        lo_s = f"> {lo:g}" if lo_open else f">= {lo:g}"
        hi_s = "" if hi == math.inf else f" and <= {hi:g}"
        raise invalid(f"'{key}' must be {lo_s}{hi_s}, got {v:g}.", param=key)
    if f32 and v and not FLOAT32_TINY <= abs(v) <= FLOAT32_MAX:
        raise invalid(f"'{key}' = {v:g} is out of float32's range (1.2e-38 to 3.4e38), "
                      "which is how it reaches the sampler.", param=key)
    return v
