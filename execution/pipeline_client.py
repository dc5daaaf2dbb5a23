"""The only interface between the HTTP gateway and the pipeline behind it.

The app never touches shm or DDS directly: it hands a `PreparedRequest` (prompt ids already
rendered and tokenised, media already decoded) to a `PipelineClient` and reads `TokenEvent`s
back. The real implementation (shm_client.py) writes media into shm slot pools, publishes the
request on DDS and reads the tokens ring; tests and tools may provide others.

Reasoning-budget hook: a client that can append tokens to a running sequence sets
``supports_injection = True`` and implements `inject`; the injected ids then come back through
the event stream like generated ones (so text, usage and the model's context agree). A client
that cannot is driven by stop + continuation instead: the gateway cancels the request and
submits a new one whose prompt is the old prompt + the tokens generated so far + the injected
ids (see generation.py). Both keep the model's context consistent with what the client sees.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol, runtime_checkable

import numpy as np

# Why a request ended, as the engine reports it. "cancelled" is internal (client gone, stop
# string hit); "error" maps to an HTTP 500 / an SSE error event.
FINISH_REASONS = ("stop", "length", "cancelled", "error")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()   # (token id, bias)


@dataclass(frozen=True)
class PreparedImage:
    # The decoded RGB image, uint8 [H, W, 3], at its own size or already resized to the grid's
    # (RequestPreparer.frame_at_own_size decides): 8x fewer bytes into shm than normalised
    # float32 patches with the temporal duplicate; the vision stage resizes it where needed,
    # normalises and patchifies.
    frame: np.ndarray
    grid_thw: tuple[int, int, int]  # (1, resized H / patch, resized W / patch)
    num_tokens: int  # placeholders expanded in the prompt for this image


@dataclass(frozen=True)
class PreparedAudio:
    pcm: np.ndarray  # mono float32
    sample_rate: int
    num_tokens: int


@dataclass(frozen=True)
class PreparedRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]  # placeholders already expanded
    sampling: SamplingParams
    images: tuple[PreparedImage, ...] = ()
    audios: tuple[PreparedAudio, ...] = ()
    arrival_time: float = field(default_factory=time.monotonic)

    def continued(self, request_id: str, extra_ids: tuple[int, ...],
                  max_tokens: int) -> "PreparedRequest":
        """The continuation used when the client cannot inject tokens: same media and
        sampling, prompt extended by what was generated plus the injected ids."""
        return dataclasses.replace(
            self, request_id=request_id,
            prompt_token_ids=self.prompt_token_ids + tuple(extra_ids),
            sampling=dataclasses.replace(self.sampling, max_tokens=max_tokens))


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (id, logprob), best first


@dataclass(frozen=True)
class TokenEvent:
    """One record of the tokens ring: new ids of one request, maybe with its end."""
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: str | None = None  # one of FINISH_REASONS when this is the last event
    error: str | None = None  # with finish_reason "error"
    num_cached_tokens: int | None = None  # prompt tokens served from the prefix cache
    # monotonic times for the latency metrics (0: unknown)
    scheduled_time: float = 0.0  # when the engine admitted the request (queue time ends)
    first_token_time: float = 0.0


@dataclass(frozen=True)
class PipelineStats:
    num_requests_running: int = 0
    num_requests_waiting: int = 0
    kv_cache_usage: float = 0.0  # 0..1
    prefix_cache_queries: int = 0  # tokens looked up (cumulative)
    prefix_cache_hits: int = 0  # tokens found (cumulative)
    # stage -> recent latencies in seconds, drained by the metrics layer
    stage_latencies: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineHealth:
    ready: bool
    detail: str = ""
    stages: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class PipelineClient(Protocol):
    supports_injection: bool

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def submit(self, request: PreparedRequest) -> AsyncIterator[TokenEvent]:
        """Send the request; iterate its token events until one has a finish_reason.
        Raises `PipelineError` if the request cannot be admitted."""
        ...

    async def cancel(self, request_id: str) -> None:
        """Stop generating for this request (client gone, stop string); idempotent."""
        ...

    def in_flight(self, request_id: str) -> bool:
        """A request of this id was submitted and has not ended (ids must be unique among
        those in flight: a request's token events are found by its id)."""
        ...

    async def inject(self, request_id: str, token_ids: tuple[int, ...]) -> None:
        """Append these ids to the running sequence as if sampled (only if supports_injection)."""
        ...

    async def health(self) -> PipelineHealth: ...

    def stats(self) -> PipelineStats: ...


class PipelineError(RuntimeError):
    """The pipeline could not take or finish the request (not the caller's fault)."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable  # True: overloaded / not ready -> 503
