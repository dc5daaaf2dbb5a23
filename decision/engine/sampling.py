"""Per-request sampling: logit bias, penalties, temperature, top-k / top-p, seeded draws,
logprobs.

Every random draw comes from the request's own `torch.Generator`, one uniform number per step,
so a seed gives the same tokens whatever else shares the batch. Penalty state (token counts)
lives on the model's device and is updated with a scatter after each step, so a step never
copies the token history to the device.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks of the sampler (OpenAI / HF semantics, see each field)."""

    max_tokens: int = 256
    # 0 means greedy (argmax); top_p / top_k / seed are then ignored.
    temperature: float = 0.0
    top_p: float = 1.0
    # 0 or -1: no top-k cut.
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    # HF semantics: over prompt and generated tokens, logit / p if positive else logit * p.
    repetition_penalty: float = 1.0
    # OpenAI semantics: over generated tokens only, logit -= f * count + p * (count > 0).
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # None: no logprobs; 0: the chosen token's logprob; k > 0: also the top k.
    logprobs: int | None = None
    # OpenAI semantics: (token id, bias in [-100, 100]) added to that token's logit before
    # anything else; +-100 in effect forces or bans it.
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "logit_bias",
                           tuple((int(t), float(b)) for t, b in self.logit_bias))
        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be >= 1 (got {self.max_tokens})")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (got {self.temperature})")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < -1:
            problems.append(f"top_k must be -1, 0 or positive (got {self.top_k})")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0 (got {self.repetition_penalty})")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            problems.append(f"frequency_penalty must be in [-2, 2] (got {self.frequency_penalty})")
        if not -2.0 <= self.presence_penalty <= 2.0:
            problems.append(f"presence_penalty must be in [-2, 2] (got {self.presence_penalty})")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            problems.append(f"logprobs must be in [0, 20] (got {self.logprobs})")
        bad = [(t, b) for t, b in self.logit_bias if t < 0 or not -100.0 <= b <= 100.0]
        if bad:
            problems.append(f"logit_bias needs token ids >= 0 and biases in [-100, 100] "
                            f"(got {bad[:3]})")
        if problems:
            raise ValueError("invalid sampling params: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0
                or self.presence_penalty != 0.0)


@dataclass
class SamplerState:
    """Per-request sampler state: the generator and, when penalties are on, token counts."""

    params: SamplingParams
    generator: torch.Generator | None = None
    # Counts of generated tokens [V] (int32) for frequency / presence penalties.
    output_counts: torch.Tensor | None = None
    # Tokens seen in prompt or output [V] (bool) for the repetition penalty.
    seen: torch.Tensor | None = None
    # logit_bias as (ids [n] long, biases [n] float32) on the device.
    bias: tuple[torch.Tensor, torch.Tensor] | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def create(cls, params: SamplingParams, prompt_ids: torch.Tensor | list[int],
               vocab_size: int, device: torch.device) -> "SamplerState":
        gen = None
        if not params.greedy:
            gen = torch.Generator(device=device)
            # No seed: still a private generator, so other requests' seeds stay reproducible.
            gen.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))
        counts = seen = None
        if params.frequency_penalty != 0.0 or params.presence_penalty != 0.0:
            counts = torch.zeros(vocab_size, dtype=torch.int32, device=device)
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            ids = torch.as_tensor(prompt_ids, dtype=torch.long).to(device)
            ids = ids[(ids >= 0) & (ids < vocab_size)]
            seen[ids] = True
        bias = None
        if params.logit_bias:
            ids, values = zip(*params.logit_bias)
            if max(ids) >= vocab_size:
                raise ValueError(f"logit_bias names token {max(ids)}, past the vocabulary "
                                 f"({vocab_size} tokens)")
            bias = (torch.tensor(ids, dtype=torch.long, device=device),
                    torch.tensor(values, dtype=torch.float32, device=device))
        return cls(params=params, generator=gen, output_counts=counts, seen=seen, bias=bias)


@dataclass
class SampleResult:
    token_ids: list[int]
    # The chosen token's logprob per row (None where not asked).
    logprobs: list[float | None]
    # [(token_id, logprob), ...] per row, empty where not asked.
    top_logprobs: list[list[tuple[int, float]]]


class DeviceSample:
    """A step's draws, still on the device, already on their way to pinned host memory.

    The copies are queued right behind the sampling kernels, so `to_host()` waits for this
    step only: the engine may queue the next step's forward before reading these tokens.
    """

    def __init__(self, token_ids: torch.Tensor, logprob_rows: list[int],
                 chosen_logprobs: torch.Tensor | None, top_values: torch.Tensor | None,
                 top_ids: torch.Tensor | None, top_k: list[int]):
        self.token_ids = token_ids          # [B] long, on the device (input of a next step)
        self.logprob_rows, self.top_k = logprob_rows, top_k
        parts = [token_ids, chosen_logprobs, top_values, top_ids]
        self._host = [None if t is None else _to_host_async(t) for t in parts]
        self._ready = None
        if token_ids.is_cuda:
            self._ready = torch.cuda.Event()
            self._ready.record()

    def to_host(self) -> SampleResult:
        if self._ready is not None:
            self._ready.synchronize()
        ids, chosen_lp, top_vals, top_ids = [None if t is None else t.tolist() for t in self._host]
        b = len(ids)
        lp_out: list[float | None] = [None] * b
        top_out: list[list[tuple[int, float]]] = [[] for _ in range(b)]
        for j, i in enumerate(self.logprob_rows):
            lp_out[i] = chosen_lp[j]
            k = self.top_k[j]
            if k and top_ids is not None:
                top_out[i] = list(zip(top_ids[j][:k], top_vals[j][:k]))
        return SampleResult(token_ids=ids, logprobs=lp_out, top_logprobs=top_out)


def _to_host_async(t: torch.Tensor) -> torch.Tensor:
    if not t.is_cuda:
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)


def sample(logits: torch.Tensor, states: list[SamplerState]) -> SampleResult:
    """Pick one token per row of `logits` [B, V] according to each row's state."""
    return sample_on_device(logits, states).to_host()


def sample_on_device(logits: torch.Tensor, states: list[SamplerState]) -> DeviceSample:
    """`sample` without waiting for the result: draws, penalty state updates and logprobs
    are queued on the device; the returned DeviceSample reads them.

    Logprobs are those of the model's distribution (log_softmax of the raw logits, before
    logit bias, penalties and temperature), as vLLM reports them by default.
    """
    logits = logits.float()
    b = logits.shape[0]
    want_logprobs = [s.params.logprobs is not None for s in states]
    raw_logprobs = torch.log_softmax(logits, dim=-1) if any(want_logprobs) else None

    biased = [i for i, s in enumerate(states) if s.bias is not None]
    if biased:
        logits = logits.clone()
        for i in biased:
            logits[i].index_add_(0, *states[i].bias)
    if any(s.params.uses_penalties for s in states):
        logits = _apply_penalties(logits if biased else logits.clone(), states)

    greedy_rows = [i for i, s in enumerate(states) if s.params.greedy]
    random_rows = [i for i, s in enumerate(states) if not s.params.greedy]
    chosen = torch.empty(b, dtype=torch.long, device=logits.device)
    if greedy_rows:
        if len(greedy_rows) == b:
            chosen = logits.argmax(dim=-1)
        else:
            idx = torch.tensor(greedy_rows, device=logits.device)
            chosen[idx] = logits[idx].argmax(dim=-1)
    if random_rows:
        idx = torch.tensor(random_rows, device=logits.device)
        chosen[idx] = _sample_random(logits[idx], [states[i] for i in random_rows])

    _update_counts(chosen, states)

    rows = [i for i in range(b) if want_logprobs[i]]
    chosen_lp = top_vals = top_ids = None
    if rows:
        idx = torch.tensor(rows, device=logits.device)
        chosen_lp = raw_logprobs[idx].gather(1, chosen[idx, None]).squeeze(1)
        kmax = max(states[i].params.logprobs for i in rows)
        if kmax > 0:
            top_vals, top_ids = raw_logprobs[idx].topk(kmax, dim=-1)
    return DeviceSample(chosen, rows, chosen_lp, top_vals, top_ids,
                        [states[i].params.logprobs for i in rows])


def _apply_penalties(logits: torch.Tensor, states: list[SamplerState]) -> torch.Tensor:
    for i, s in enumerate(states):
        p = s.params
        if s.seen is not None:
            row = logits[i]
            penalised = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
            logits[i] = torch.where(s.seen, penalised, row)
        if s.output_counts is not None:
            counts = s.output_counts.float()
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
    return logits


def _sample_random(logits: torch.Tensor, states: list[SamplerState]) -> torch.Tensor:
    """Temperature, top-k, top-p, then inverse-CDF with one uniform draw per row."""
    dev = logits.device
    temps = torch.tensor([s.params.temperature for s in states], device=dev)
    logits = logits / temps[:, None]
    sorted_logits, sorted_ids = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    ranks = torch.arange(vocab, device=dev)[None, :]
    top_k = torch.tensor([s.params.top_k if s.params.top_k > 0 else vocab for s in states],
                         device=dev)
    sorted_logits = sorted_logits.masked_fill(ranks >= top_k[:, None], float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    top_p = torch.tensor([s.params.top_p for s in states], device=dev)
    # Keep a token while the mass before it is below top_p (so the top token always stays).
    mass_before = probs.cumsum(dim=-1) - probs
    probs = probs.masked_fill(mass_before >= top_p[:, None], 0.0)
    cdf = probs.cumsum(dim=-1)
    draws = torch.cat([torch.rand(1, generator=s.generator, device=dev) for s in states])
    u = draws * cdf[:, -1]
    pick = torch.searchsorted(cdf, u[:, None], right=True).clamp_(max=vocab - 1)
    return sorted_ids.gather(1, pick).squeeze(1)


def _update_counts(chosen: torch.Tensor, states: list[SamplerState]) -> None:
    for i, s in enumerate(states):
        tok = chosen[i:i + 1]
        if s.output_counts is not None:
            s.output_counts.index_add_(0, tok, torch.ones(1, dtype=torch.int32, device=tok.device))
        if s.seen is not None:
            s.seen.index_fill_(0, tok, True)
