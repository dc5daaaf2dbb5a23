"""ChatRequest -> PreparedRequest: media decoded, prompt rendered and tokenised, limits checked.

CPU-bound (image decoding and resizing a 1080x2400 screenshot takes tens of ms), so the app
runs it in a worker thread, keeping the event loop free for the other streams.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from modelcore.prompt import PromptError, build_prompt
from modelcore.tokenizer import END_THINK, SPECIAL_TOKEN_NAMES, THINK, GlmTokenizer

from .config import PrepareConfig
from .errors import APIError, invalid
from .generation import OutputOptions
from .media import audio_bytes, load_url_bytes
from .openai_schema import AudioPart, ChatRequest, ImagePart, TextPart
from .pipeline_client import PreparedAudio, PreparedImage, PreparedRequest, SamplingParams

DETOKENIZER_CONTEXT = 4  # prompt ids decoded as context before the first generated id


@dataclass(frozen=True)
class Prepared:
    request: PreparedRequest
    options: OutputOptions
    prompt_text: str


@dataclass(frozen=True)
class AudioLayout:
    """How audio clips enter the prompt when the audio stage embeds them (mode "embed").

    Each clip is resampled to 16 kHz here (so the count is exact: the audio stage gets these
    very samples) and stands in the prompt as ``begin + token * n + end``, n = the rows the
    audio stage will produce for it (runtime.compute.audio_placeholder names the tokens)."""
    begin: str
    token: str
    end: str
    pooling: int
    sample_rate: int = 16000

    @classmethod
    def from_dir(cls, model_dir, tokenizer: GlmTokenizer) -> "AudioLayout":
        from perception.audio.config import AdapterConfig
        from perception.audio.pipeline import resolve_audio_dir
        from runtime.compute import audio_placeholder

        names = audio_placeholder(tokenizer)
        if names is None:
            raise ValueError("the tokenizer has no audio (or video) placeholder tokens")
        acfg = AdapterConfig.from_dir(resolve_audio_dir(model_dir))
        return cls(*names, pooling=int(acfg.pooling))

    def num_tokens(self, n_samples: int) -> int:
        """Rows the audio stage produces for this many 16 kHz samples: 30 s windows, a
        final sliver under MIN_TAIL_SAMPLES dropped, as perception.audio's stream does."""
        from perception.audio.adapter import token_count
        from perception.audio.mel import WINDOW_SAMPLES, valid_mel_frames
        from perception.audio.pipeline import MIN_TAIL_SAMPLES

        total, left, windows = 0, int(n_samples), 0
        while left > 0:
            n = min(left, WINDOW_SAMPLES)
            if n < MIN_TAIL_SAMPLES and windows:
                break
            total += token_count(-(-valid_mel_frames(n) // 2), self.pooling)
            left -= n
            windows += 1
        return total


class RequestPreparer:
    def __init__(self, tokenizer: GlmTokenizer, image_processor=None,
                 config: PrepareConfig = PrepareConfig(), audio: AudioLayout | None = None):
        self.tok = tokenizer
        self.images = image_processor  # perception.vision.processor.ImageProcessor
        self.config = config
        self.audio = audio  # None: audio carries no placeholder (no embedding audio stage)
        self.skip_ids = frozenset(i for n, i in tokenizer.special.items()
                                  if n in SPECIAL_TOKEN_NAMES)
        self.close_reasoning_ids = tuple(tokenizer.encode(END_THINK))

    def prepare(self, req: ChatRequest, request_id: str | None = None) -> Prepared:
        images, audios, messages = [], [], []
        for i, m in enumerate(req.messages):
            if isinstance(m.content, str):
                messages.append({"role": m.role, "content": m.content})
                continue
            parts = []
            for p in m.content:
                if isinstance(p, TextPart):
                    parts.append({"type": "text", "text": p.text})
                elif isinstance(p, ImagePart):
                    images.append(self._image(p))
                    parts.append({"type": "image"})
                elif isinstance(p, AudioPart):
                    # The audio stage turns PCM into embeddings the decision stage merges at
                    # the placeholder (AudioLayout); without a layout none is written.
                    audios.append(self._audio(p))
                    if self.audio is not None:
                        a = self.audio
                        parts.append({"type": "text", "text": a.begin + a.token + a.end})
            messages.append({"role": m.role, "content": parts})
        try:
            prompt = build_prompt(self.tok, messages, [im.num_tokens for im in images],
                                  template=self.config.chat_template,
                                  enable_thinking=req.enable_thinking,
                                  content_format=self.config.content_format)
        except PromptError as exc:
            raise invalid(f"Cannot build the prompt: {exc}", param="messages") from None
        prompt_ids = list(prompt.ids)
        if self.audio is not None and audios:
            prompt_ids = _expand_audio(prompt_ids, self.tok.require(self.audio.token),
                                       [a.num_tokens for a in audios])
        n_prompt = len(prompt_ids)
        limit = self.config.max_model_len
        if req.max_tokens is not None and n_prompt + req.max_tokens > limit:
            raise _too_long(limit, n_prompt, req.max_tokens)
        if n_prompt >= limit:
            raise _too_long(limit, n_prompt, 0)
        max_tokens = req.max_tokens if req.max_tokens is not None else limit - n_prompt

        sampling = SamplingParams(
            temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, seed=req.seed,
            max_tokens=max_tokens, stop_token_ids=tuple(self.tok.eos_token_ids),
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            repetition_penalty=req.repetition_penalty, logprobs=req.logprobs,
            top_logprobs=req.top_logprobs)
        rid = request_id or f"chatcmpl-{uuid.uuid4().hex}"
        prepared = PreparedRequest(rid, tuple(prompt_ids), sampling, tuple(images), tuple(audios))
        options = OutputOptions(
            stop=req.stop, return_reasoning=req.return_reasoning,
            start_in_reasoning=_ends_inside_think(prompt.text),
            max_reasoning_steps=req.max_reasoning_steps,
            close_reasoning_ids=self.close_reasoning_ids, skip_ids=self.skip_ids,
            context_ids=tuple(prompt_ids[-DETOKENIZER_CONTEXT:]))
        return Prepared(prepared, options, prompt.text)

    # --- media ----------------------------------------------------------------------------
    def _image(self, part: ImagePart) -> PreparedImage:
        from perception.vision.processor import ImageInputError, decode_image, to_rgb
        from PIL import Image

        if self.images is None:
            raise invalid("This deployment has no vision stage; images are not accepted.",
                          param=part.param)
        data = load_url_bytes(part.url, part.param, self.config.allowed_media_dir)
        try:
            rgb = to_rgb(decode_image(data))
            h, w = self.images.resized_size(*rgb.size)
        except ImageInputError as exc:
            raise invalid(f"{part.param}: {exc}", param=part.param, code="invalid_image") from None
        if (w, h) != rgb.size:
            rgb = rgb.resize((w, h), resample=Image.Resampling.BICUBIC)
        frame = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
        patch = self.images.patch_size
        return PreparedImage(frame, (1, h // patch, w // patch),
                             self.images.num_image_tokens(*rgb.size))

    def _audio(self, part: AudioPart) -> PreparedAudio:
        from perception.audio.decode import decode_audio
        from perception.audio.errors import AudioInputError

        data = audio_bytes(part.data_b64, part.param)
        try:
            pcm, rate = decode_audio(data)
        except AudioInputError as exc:
            raise invalid(f"{part.param}: {exc}", param=part.param, code="invalid_audio") from None
        if self.audio is None:
            return PreparedAudio(pcm, rate, 0)
        from perception.audio.resample import resample
        pcm16 = resample(pcm, rate, self.audio.sample_rate)
        n = self.audio.num_tokens(pcm16.size)
        if n < 1:
            raise invalid(f"{part.param}: audio is too short", param=part.param,
                          code="invalid_audio")
        return PreparedAudio(pcm16, self.audio.sample_rate, n)


def _expand_audio(ids: list[int], token_id: int, counts: list[int]) -> list[int]:
    """Each single audio placeholder token becomes as many as its clip has rows."""
    if sum(1 for i in ids if i == token_id) != len(counts):
        raise invalid(f"the prompt has {sum(1 for i in ids if i == token_id)} audio "
                      f"placeholder(s) for {len(counts)} audio clip(s) (is the placeholder "
                      "token written in the text?)", param="messages")
    out: list[int] = []
    it = iter(counts)
    for i in ids:
        out.extend([i] * next(it) if i == token_id else [i])
    return out


def _ends_inside_think(prompt_text: str) -> bool:
    """The template opened a thinking block the model is to continue."""
    tail = prompt_text.rstrip()
    return tail.endswith(THINK) and not tail.endswith(THINK + END_THINK)


def _too_long(limit: int, n_prompt: int, n_completion: int) -> APIError:
    # vLLM's wording, which clients and users search for.
    return invalid(
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{n_prompt + n_completion} tokens ({n_prompt} in the messages, {n_completion} in the "
        "completion). Please reduce the length of the messages or completion.",
        param="messages", code="context_length_exceeded")


def token_text_fn(tokenizer: GlmTokenizer):
    """id -> its text alone, for logprobs (vLLM shows decoded token strings too)."""
    def text(i: int) -> str:
        return tokenizer.decode([i])
    return text


def decode_ids_fn(tokenizer: GlmTokenizer):
    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(ids)
    return decode
