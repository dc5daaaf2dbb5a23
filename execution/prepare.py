"""ChatRequest -> PreparedRequest: media decoded, prompt rendered and tokenised, limits checked.

CPU-bound (image decoding and resizing a 1080x2400 screenshot takes tens of ms), so the app
runs it in a worker thread, keeping the event loop free for the other streams.

Audio, by the deployment's audio stage mode:
- none (no audio stage in the model pipeline): clips are decoded and checked, nothing enters
  the prompt;
- "embed" (`AudioLayout`): each clip, resampled to 16 kHz here, stands in the prompt as
  ``begin + token * n + end`` and travels with the generation request to the audio stage;
- "transcribe" (`AudioTranscription`): after every part of the request is decoded (so bad
  input is refused before the audio stage is bothered), the 16 kHz clips go to the audio stage
  and the preparer waits for their transcripts (this worker thread blocks; the event loop
  does not); each transcript replaces its audio part as a text part, and only then is the
  prompt rendered and tokenised. The generation request carries no audio.
Bad audio (undecodable, empty, non-finite samples, longer than `max_audio_seconds`, a rate
outside 8-48 kHz) is an HTTP 400 naming the part; an audio stage that fails, dies or does not
answer within the timeout is a 500/503 saying so (execution.shm_client.AudioStageError).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from modelcore.prompt import PromptError, build_prompt
from modelcore.tokenizer import END_THINK, SPECIAL_TOKEN_NAMES, THINK, GlmTokenizer

from .config import PrepareConfig
from .errors import APIError, invalid, server_error
from .generation import OutputOptions
from .media import audio_bytes, load_url_bytes
from .openai_schema import AudioPart, ChatRequest, ImagePart, TextPart
from .pipeline_client import (PipelineError, PreparedAudio, PreparedImage, PreparedRequest,
                              SamplingParams)

DETOKENIZER_CONTEXT = 4  # prompt ids decoded as context before the first generated id
DEFAULT_MAX_AUDIO_SECONDS = 600.0  # = perception.audio.DEFAULT_MAX_SECONDS


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


@dataclass(frozen=True)
class AudioTranscription:
    """How audio enters the prompt when the audio stage transcribes (mode "transcribe").

    `transcribe(request_id, clips, timeout_s)` returns one text per clip (float32 mono PCM at
    `sample_rate`), raising PipelineError (an AudioStageError carries the HTTP status) when
    the audio stage cannot; ShmPipelineClient.transcribe is the real one."""
    transcribe: Callable[[str, Sequence[np.ndarray], float], list[str]]
    timeout_s: float = 120.0
    sample_rate: int = 16000


class RequestPreparer:
    def __init__(self, tokenizer: GlmTokenizer, image_processor=None,
                 config: PrepareConfig = PrepareConfig(), audio: AudioLayout | None = None,
                 transcription: AudioTranscription | None = None,
                 max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
                 frame_at_own_size: Callable[[int], bool] | None = None):
        if audio is not None and transcription is not None:
            raise ValueError("audio is either embedded (AudioLayout) or transcribed "
                             "(AudioTranscription), not both")
        self.tok = tokenizer
        self.images = image_processor  # perception.vision.processor.ImageProcessor
        self.config = config
        self.audio = audio  # None: audio carries no placeholder (no embedding audio stage)
        self.transcription = transcription  # set: audio becomes text before the prompt
        self.max_audio_seconds = float(max_audio_seconds)
        # Given a decoded image's bytes: may it go at its own size, for the vision stage to
        # resize on its GPU (30-45 ms of Pillow on a CPU core here for a screenshot)? None:
        # every image is resized here.
        self.frame_at_own_size = frame_at_own_size
        self.skip_ids = frozenset(i for n, i in tokenizer.special.items()
                                  if n in SPECIAL_TOKEN_NAMES)
        self.close_reasoning_ids = tuple(tokenizer.encode(END_THINK))
        # The chat template compiles on first use (Jinja): here, not in the first request
        # (~7 ms of its TTFT on the 2-core VM). A template that fails is told per request.
        try:
            build_prompt(tokenizer, [{"role": "user", "content": "hi"}],
                         template=config.chat_template, content_format=config.content_format)
        except PromptError:
            pass

    def prepare(self, req: ChatRequest, request_id: str | None = None) -> Prepared:
        rid = request_id or f"chatcmpl-{uuid.uuid4().hex}"
        images, audios, messages = [], [], []
        transcribed: list[tuple[dict, str]] = []  # (text part to fill, its audio part's param)
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
                    elif self.transcription is not None:
                        part = {"type": "text", "text": ""}  # the transcript, filled below
                        transcribed.append((part, p.param))
                        parts.append(part)
            messages.append({"role": m.role, "content": parts})
        if transcribed:
            for (part, _), text in zip(transcribed, self._transcribe(rid, audios, transcribed)):
                part["text"] = text
            audios = []  # the text is in the prompt; the generation request carries no audio
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
            top_logprobs=req.top_logprobs, logit_bias=self._logit_bias(req.logit_bias))
        prepared = PreparedRequest(rid, tuple(prompt_ids), sampling, tuple(images), tuple(audios))
        options = OutputOptions(
            stop=req.stop, return_reasoning=req.return_reasoning,
            start_in_reasoning=_ends_inside_think(prompt.text),
            max_reasoning_steps=req.max_reasoning_steps,
            close_reasoning_ids=self.close_reasoning_ids, skip_ids=self.skip_ids,
            context_ids=tuple(prompt_ids[-DETOKENIZER_CONTEXT:]))
        return Prepared(prepared, options, prompt.text)

    def _logit_bias(self, bias: tuple[tuple[int, float], ...]) -> tuple[tuple[int, float], ...]:
        vocab = self.tok.vocab_size
        past = [t for t, _ in bias if t >= vocab]
        if past:
            raise invalid(f"logit_bias names token {past[0]}, past the vocabulary ({vocab} "
                          "tokens).", param="logit_bias")
        return bias

    # --- media ----------------------------------------------------------------------------
    def _image(self, part: ImagePart) -> PreparedImage:
        from perception.vision.processor import ImageInputError, decode_image, rgb_array, to_rgb

        if self.images is None:
            raise invalid("This deployment has no vision stage; images are not accepted.",
                          param=part.param)
        data = load_url_bytes(part.url, part.param, self.config.allowed_media_dir)
        try:
            image = decode_image(data)
            h, w = self.images.resized_size(*image.size)
        except ImageInputError as exc:
            raise invalid(f"{part.param}: {exc}", param=part.param, code="invalid_image") from None
        n_tokens = self.images.num_image_tokens(*image.size)
        own = self.frame_at_own_size
        if (w, h) != image.size and own and own(image.size[0] * image.size[1] * 3):
            frame = rgb_array(image)   # the vision stage resizes it
        else:
            frame = self.images.resize_to(to_rgb(image), h, w)
        patch = self.images.patch_size
        return PreparedImage(frame, (1, h // patch, w // patch), n_tokens)

    def _audio(self, part: AudioPart) -> PreparedAudio:
        from perception.audio.decode import decode_audio
        from perception.audio.errors import AudioInputError

        data = audio_bytes(part.data_b64, part.param)
        try:
            pcm, rate = decode_audio(data, self.max_audio_seconds)
        except AudioInputError as exc:
            raise invalid(f"{part.param}: {exc}", param=part.param, code="invalid_audio") from None
        if self.transcription is not None:
            # The pcm pool holds 16 kHz clips (the audio stage's contract in both modes).
            from perception.audio.resample import resample
            sr = self.transcription.sample_rate
            return PreparedAudio(resample(pcm, rate, sr), sr, 0)
        if self.audio is None:
            return PreparedAudio(pcm, rate, 0)
        from perception.audio.resample import resample
        pcm16 = resample(pcm, rate, self.audio.sample_rate)
        n = self.audio.num_tokens(pcm16.size)
        if n < 1:
            raise invalid(f"{part.param}: audio is too short", param=part.param,
                          code="invalid_audio")
        return PreparedAudio(pcm16, self.audio.sample_rate, n)

    def _transcribe(self, rid: str, audios: list[PreparedAudio],
                    parts: list[tuple[dict, str]]) -> list[str]:
        t = self.transcription
        try:
            texts = t.transcribe(rid, [a.pcm for a in audios], t.timeout_s)
        except PipelineError as exc:
            status = getattr(exc, "status", 503 if exc.retryable else 500)
            clip = getattr(exc, "clip", None)
            if status == 400:  # the audio stage found the audio itself unusable
                param = parts[clip][1] if clip is not None and 0 <= clip < len(parts) \
                    else "messages"
                raise invalid(f"{param}: the audio could not be transcribed: {exc}",
                              param=param, code="invalid_audio") from None
            raise server_error(f"Audio transcription failed: {exc}", status) from None
        if len(texts) != len(audios):
            raise server_error(f"Audio transcription failed: {len(texts)} transcripts for "
                               f"{len(audios)} audio clips")
        return texts


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
