"""`autoglm bench serve`: load an OpenAI-compatible chat endpoint and report what vLLM's
`vllm bench serve` reports, with the same definitions.

    autoglm bench serve --base-url http://127.0.0.1:8000 --num-prompts 100 --request-rate 4
    autoglm bench serve --dataset random-image --image-size 1080x2400 --max-concurrency 4
    autoglm bench serve --instance NAME ...      # + the pipeline's own overhead, from traces

Per request (streamed, ``stream_options.include_usage``):
* TTFT: from sending the request to the first streamed chunk that carries output text
  (``content`` or reasoning). Chunks without text (the assistant-role chunk a server may send
  before any token, the usage chunk) are not tokens: counting the role chunk would make TTFT
  measure the HTTP round trip only, whenever a server sends it early (this gateway does);
* E2E latency: from sending to the last data event (before ``[DONE]``), as vLLM;
* output tokens: ``usage.completion_tokens`` when the server sends usage, else the number of
  text-carrying chunks; both content and reasoning count;
* TPOT = (latency - TTFT) / (output tokens - 1), for requests with more than one token;
* ITL: every gap between consecutive text-carrying chunks, pooled over all requests.
Each reported as mean, median, std and the chosen percentiles (``--percentiles``, p99 by
default), in ms. Throughputs divide by the benchmark's wall time: completed requests,
output tokens, input + output tokens per second. Goodput (``--goodput ttft:MS tpot:MS
e2el:MS``) counts the requests meeting every given SLO, per second.

Load, as vLLM's ``get_request``: ``--request-rate R`` requests/s; each request, the first
included, draws a delay from gamma(shape=B, scale=1/(R*B)) with ``--burstiness B`` (1, the
default: exponential, i.e. Poisson arrivals; ``inf``: a fixed 1/R); the k-th request is
sent at start + the sum of the first k delays, all sums scaled so that the last of N goes
out at exactly N/R (the request rate then does not depend on the seed). ``--request-rate inf``
(default) sends all at once. ``--max-concurrency`` caps the requests in flight either way:
a request due while the cap is reached waits for a slot.

Datasets (synthetic, nothing downloaded): ``random`` text of ``--random-input-len`` random
words and ``--random-output-len`` max tokens; ``random-image`` adds ``--num-images``
synthetic phone screens (PNG data: URLs, ``--image-size WxH``, 1080x2400 by default);
``random-audio`` adds a synthetic WAV clip as ``input_audio`` (``--audio-seconds``).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DATASETS = ("random", "random-image", "random-audio")
GOODPUT_KEYS = ("ttft", "tpot", "e2el")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# =============================================================================== CLI
def register_bench(sub) -> None:
    p = sub.add_parser("serve", help="TTFT / TPOT / ITL / throughput of an OpenAI endpoint (vLLM's definitions)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_cli)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root (default: %(default)s)")
    p.add_argument("--endpoint", default="/v1/chat/completions", help="(default: %(default)s)")
    p.add_argument("--model", default=None, help="model name (default: the first of GET /v1/models)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                   help="bearer token (default: $OPENAI_API_KEY)")
    p.add_argument("--dataset", choices=DATASETS, default="random", help="(default: %(default)s)")
    p.add_argument("--num-prompts", type=int, default=100, help="requests to send (default: %(default)s)")
    p.add_argument("--random-input-len", type=int, default=128, help="prompt words (default: %(default)s)")
    p.add_argument("--random-output-len", type=int, default=64, help="max_tokens (default: %(default)s)")
    p.add_argument("--image-size", default="1080x2400", help="random-image: WxH (default: %(default)s)")
    p.add_argument("--num-images", type=int, default=1, help="random-image: images per request (default: %(default)s)")
    p.add_argument("--audio-seconds", type=float, default=5.0, help="random-audio: clip length (default: %(default)s)")
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="requests per second, the last of N sent at N/rate; inf sends all at once "
                        "(default: %(default)s)")
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape of the delays between requests; 1 = Poisson, inf = evenly "
                        "spaced (default: %(default)s)")
    p.add_argument("--max-concurrency", type=int, default=None, help="cap on requests in flight")
    p.add_argument("--percentiles", default="99", help="comma-separated, e.g. 50,90,99 (default: %(default)s)")
    p.add_argument("--goodput", nargs="+", default=None, metavar="KEY:MS",
                   help="SLOs for goodput, e.g. ttft:500 tpot:50 e2el:2000")
    p.add_argument("--temperature", type=float, default=0.0, help="(default: %(default)s)")
    p.add_argument("--ignore-eos", action="store_true", help="send ignore_eos (vLLM extension)")
    p.add_argument("--seed", type=int, default=0, help="dataset and arrival seed (default: %(default)s)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request (default: %(default)s)")
    p.add_argument("--no-test-request", action="store_true",
                   help="skip the single request sent first to check the endpoint")
    p.add_argument("--instance", default=None,
                   help="also attach to this pipeline's trace topic and report its own overhead")
    p.add_argument("--record", default=None, metavar="FILE",
                   help="with --instance: also save the benchmark requests' spans there (a "
                        "recording: `autoglm profile --input FILE --request ID` replays it)")
    p.add_argument("--client-priority", choices=("normal", "idle"), default="normal",
                   help="idle: this client runs at SCHED_IDLE, only on CPU time the pipeline "
                        "leaves, so that on a machine where it shares the pipeline's cores it "
                        "never preempts the stages it measures; its own timestamps can then "
                        "only lag, which makes TTFT/E2E pessimistic (default: %(default)s)")
    p.add_argument("--result-file", default=None,
                   help="JSON result path (default: benchmarks/results/serve-<dataset>-<time>.json)")
    p.add_argument("--no-json", action="store_true", help="print only")


def parse_percentiles(text: str) -> list[float]:
    def bad(msg):
        raise SystemExit(f"autoglm bench serve: --percentiles: {msg}")
    qs = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        try:
            q = float(item)
        except ValueError:
            bad(f"{item!r} is not a number (give numbers like 50,90,99)")
        if not 0 < q <= 100:
            bad(f"{item} is not in (0, 100]")
        qs.append(q)
    if not qs:
        bad("give at least one, e.g. 50,90,99")
    return qs


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    slos: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition(":")
        if not sep or key not in GOODPUT_KEYS:
            raise SystemExit(f"autoglm bench serve: --goodput takes KEY:MS with KEY one of "
                             f"{', '.join(GOODPUT_KEYS)}; got {item!r}")
        try:
            ms = float(value)
        except ValueError:
            raise SystemExit(f"autoglm bench serve: --goodput {item!r}: {value!r} is not a number of ms") from None
        if ms <= 0:
            raise SystemExit(f"autoglm bench serve: --goodput {item!r}: the SLO must be positive")
        slos[key] = ms
    return slos


def parse_size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
        raise SystemExit(f"autoglm bench serve: --image-size must be WxH, e.g. 1080x2400; got {text!r}")
    return int(w), int(h)


def validate(args) -> None:
    def bad(msg):
        raise SystemExit(f"autoglm bench serve: {msg}")
    if args.num_prompts < 1:
        bad("--num-prompts must be at least 1")
    if args.random_input_len < 1 or args.random_output_len < 1:
        bad("--random-input-len and --random-output-len must be at least 1")
    if not args.request_rate > 0:
        bad("--request-rate must be positive (or inf)")
    if not args.burstiness > 0:
        bad("--burstiness must be positive")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        bad("--max-concurrency must be at least 1")
    if args.num_images < 1:
        bad("--num-images must be at least 1")
    if not args.audio_seconds > 0:
        bad("--audio-seconds must be positive")
    if not args.request_timeout > 0:
        bad("--request-timeout must be positive")
    if not args.base_url.startswith(("http://", "https://")):
        bad(f"--base-url must start with http:// or https://, got {args.base_url!r}")
    if args.record and not args.instance:
        bad("--record saves the pipeline's spans: give --instance too")
    if args.instance:
        from launch.instance_name import check_instance

        check_instance(args.instance, "bench serve")


# =============================================================================== datasets
@dataclass
class SampleRequest:
    messages: list
    prompt_len: int  # estimate (words); the server's usage.prompt_tokens replaces it
    output_len: int


_WORDS = ("the screen shows a settings page with wifi bluetooth display sound battery storage "
          "apps privacy location security accounts system about phone tap open scroll back home "
          "search message contact camera gallery map music video clock weather calendar note").split()


def synthetic_screen_png(width: int, height: int, seed: int) -> bytes:
    """A phone-screen-like PNG: status bar, app bar, list rows, buttons. Flat colours, so it
    compresses like real UI screenshots do (not like noise). Encoded as Open-AutoGLM's client
    sends a screenshot: the RGBA image Android's screencap writes (every alpha 255), saved
    again with Pillow's defaults (zlib level 6, filtered rows), which decodes 2-3x slower
    than the level-1 RGB file this wrote before (results up to 2026-12-05)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (width, height), (250, 250, 250))
    d = ImageDraw.Draw(img)
    unit = max(1, height // 40)
    d.rectangle([0, 0, width, unit], fill=(30, 30, 30))
    d.rectangle([0, unit, width, 3 * unit], fill=tuple(rng.randrange(40, 200) for _ in range(3)))
    y = 3 * unit + unit // 2
    while y < height - 3 * unit:
        h = rng.randrange(unit, 3 * unit)
        d.rectangle([unit // 2, y, unit // 2 + h, y + h], fill=tuple(rng.randrange(256) for _ in range(3)))
        for line in range(rng.randrange(1, 3)):
            x1 = unit + h + rng.randrange(width // 3, width - 2 * unit - h)
            d.rectangle([unit + h, y + line * unit // 2 + unit // 4, x1, y + line * unit // 2 + unit // 2],
                        fill=(60, 60, 60))
        y += h + unit // 2
        d.line([0, y - unit // 4, width, y - unit // 4], fill=(220, 220, 220), width=max(1, unit // 20))
    d.rectangle([0, height - 2 * unit, width, height], fill=(240, 240, 240))
    img.putalpha(255)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def synthetic_wav(seconds: float, seed: int, rate: int = 16000) -> bytes:
    """Mono 16-bit PCM WAV: a few tones with a little noise (speech-band energy)."""
    import wave

    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    sig = sum(0.2 * np.sin(2 * np.pi * f * t) for f in rng.uniform(150, 3000, size=3))
    sig = sig + 0.02 * rng.standard_normal(t.size)
    pcm = (np.clip(sig, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def build_dataset(args) -> list[SampleRequest]:
    rng = random.Random(args.seed)
    media: list[dict] = []
    # A few distinct media items reused round-robin: generating a 1080x2400 PNG per request
    # would make the client, not the server, the bottleneck.
    if args.dataset == "random-image":
        w, h = parse_size(args.image_size)
        media = [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(synthetic_screen_png(w, h, args.seed + i)).decode()}}
            for i in range(min(4, args.num_prompts * args.num_images))]
    elif args.dataset == "random-audio":
        media = [{"type": "input_audio", "input_audio": {
            "data": base64.b64encode(synthetic_wav(args.audio_seconds, args.seed + i)).decode(), "format": "wav"}}
            for i in range(min(4, args.num_prompts))]
    per_request = args.num_images if args.dataset == "random-image" else 1
    out = []
    for i in range(args.num_prompts):
        # A distinct leading number keeps every prompt unique (no prefix-cache free rides).
        text = f"{i} " + " ".join(rng.choice(_WORDS) for _ in range(args.random_input_len - 1))
        if media:
            parts = [media[(i * per_request + k) % len(media)] for k in range(per_request)]
            content = parts + [{"type": "text", "text": text}]
        else:
            content = text
        out.append(SampleRequest([{"role": "user", "content": content}], args.random_input_len,
                                 args.random_output_len))
    return out


# =============================================================================== one request
@dataclass
class RequestOutput:
    success: bool = False
    error: str = ""
    request_id: str = ""
    prompt_len: int = 0
    output_tokens: int = 0
    chunks: int = 0
    usage_reported: bool = False
    ttft: float = 0.0  # seconds
    latency: float = 0.0
    itl: list = field(default_factory=list)
    generated_text: str = ""
    start_time: float = 0.0  # perf_counter at send


def _events(buffer: bytearray):
    """Split complete SSE events off ``buffer``; yield each event's joined data."""
    while True:
        idx, sep_len = -1, 0
        for sep in (b"\n\n", b"\r\n\r\n"):
            i = buffer.find(sep)
            if i != -1 and (idx == -1 or i < idx):
                idx, sep_len = i, len(sep)
        if idx == -1:
            return
        raw = bytes(buffer[:idx])
        del buffer[:idx + sep_len]
        data = [line[5:].lstrip() if line.startswith(b"data:") else None
                for line in raw.replace(b"\r\n", b"\n").split(b"\n")]
        data = [d for d in data if d is not None]
        if data:
            yield b"\n".join(data).decode("utf-8")


async def send_request(client, url: str, body: dict, headers: dict, sample: SampleRequest) -> RequestOutput:
    out = RequestOutput(prompt_len=sample.prompt_len)
    text_parts: list[str] = []
    st = time.perf_counter()
    out.start_time = st
    last_event = st
    last_token = None
    try:
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode("utf-8", "replace")[:500]
                out.error = f"HTTP {resp.status_code}: {detail}"
                return out
            buffer = bytearray()
            done = False
            async for piece in resp.aiter_bytes():
                buffer += piece
                now = time.perf_counter()  # all events completed by this read arrived now
                for data in _events(buffer):
                    if data == "[DONE]":
                        done = True
                        break
                    obj = json.loads(data)
                    last_event = now
                    if "error" in obj:
                        err = obj["error"]
                        out.error = f"server error: {err.get('message', err) if isinstance(err, dict) else err}"
                        return out
                    out.request_id = out.request_id or str(obj.get("id", ""))
                    for choice in obj.get("choices") or []:
                        delta = choice.get("delta") or {}
                        text = (delta.get("content") or "") + (
                            delta.get("reasoning_content") or delta.get("reasoning") or "")
                        if text:
                            if last_token is None:
                                out.ttft = now - st
                            else:
                                out.itl.append(now - last_token)
                            last_token = now
                            out.chunks += 1
                            text_parts.append(text)
                    usage = obj.get("usage")
                    if usage:
                        out.usage_reported = True
                        out.output_tokens = int(usage.get("completion_tokens") or 0)
                        if usage.get("prompt_tokens"):
                            out.prompt_len = int(usage["prompt_tokens"])
                if done:
                    break
    except Exception as e:  # connection refused / reset, timeout, bad JSON
        out.error = f"{type(e).__name__}: {e}"
        return out
    out.generated_text = "".join(text_parts)
    if last_token is None:
        out.error = "the stream carried no output text"
        return out
    if not out.usage_reported:
        out.output_tokens = out.chunks
    out.latency = last_event - st
    out.success = True
    return out


# =============================================================================== load
def arrival_times(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """When to send each of n requests, in seconds from the start, as vLLM's get_request
    (vllm/benchmarks/serve.py) with a fixed rate: one delay per request, the first included,
    from gamma(shape=B, scale=1/(R*B)) (B=1: exponential, Poisson arrivals; B=inf: 1/R);
    their running sums, scaled so that the last is exactly n/R. R=inf: all at 0."""
    if n < 1:
        return []
    if math.isinf(rate):
        return [0.0] * n
    import numpy as np

    if math.isinf(burstiness):
        delays = np.full(n, 1.0 / rate)
    else:
        rng = np.random.default_rng(seed)
        delays = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    times = np.cumsum(delays)
    if times[-1] != 0:
        # vLLM: "close the gap for stabilizing the throughput data from different random seeds"
        times *= (n / rate) / times[-1]
    return times.tolist()


class Progress:
    """A plain-text progress line on stderr."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.failed = total, 0, 0
        self.stream = stream
        self.t0 = time.perf_counter()
        self.tty = stream.isatty()
        self._last_draw = 0.0

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        now = time.perf_counter()
        if self.tty or self.done == self.total or now - self._last_draw > 2.0:
            self._last_draw = now
            width = 30
            filled = int(width * self.done / self.total)
            line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                    f"({self.failed} failed) {now - self.t0:.1f}s")
            self.stream.write(("\r" if self.tty else "") + line + ("" if self.tty else "\n"))
            if self.tty and self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


async def run_benchmark(*, base_url: str, endpoint: str, model: str, api_key: str | None,
                        samples: list[SampleRequest], request_rate: float = math.inf,
                        burstiness: float = 1.0, max_concurrency: int | None = None,
                        temperature: float = 0.0, ignore_eos: bool = False, seed: int = 0,
                        request_timeout: float = 600.0, test_request: bool = True,
                        progress: bool = True) -> tuple[list[RequestOutput], float]:
    """Send every sample; returns (outputs in sample order, benchmark duration in s)."""
    import httpx

    url = base_url.rstrip("/") + endpoint
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=max_concurrency or len(samples) + 1,
                          max_keepalive_connections=max_concurrency or len(samples) + 1)
    timeout = httpx.Timeout(request_timeout, connect=30.0)

    def body(s: SampleRequest) -> dict:
        b = {"model": model, "messages": s.messages, "max_tokens": s.output_len, "stream": True,
             "stream_options": {"include_usage": True}, "temperature": temperature}
        if ignore_eos:
            b["ignore_eos"] = True
        return b

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        if test_request:
            first = await send_request(client, url, body(samples[0]), headers, samples[0])
            if not first.success:
                raise SystemExit(f"autoglm bench serve: the test request to {url} failed: {first.error}")
        sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        bar = Progress(len(samples)) if progress else None

        async def one(s: SampleRequest) -> RequestOutput:
            if sem is None:
                r = await send_request(client, url, body(s), headers, s)
            else:
                async with sem:
                    r = await send_request(client, url, body(s), headers, s)
            if bar:
                bar.update(r.success)
            return r

        tasks = []
        times = arrival_times(len(samples), request_rate, burstiness, seed)
        t0 = time.perf_counter()
        for s, at in zip(samples, times):
            # Against the start, not the previous send: lateness does not accumulate.
            wait = t0 + at - time.perf_counter()
            if at > 0 and wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(s)))
        outputs = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
    return list(outputs), duration


# =============================================================================== metrics
def _stats_ms(name: str, values_s: list[float], percentiles: list[float]) -> dict:
    import numpy as np

    a = np.asarray(values_s or [0.0], dtype=np.float64) * 1e3
    d = {f"mean_{name}_ms": float(a.mean()), f"median_{name}_ms": float(np.median(a)),
         f"std_{name}_ms": float(a.std())}
    for q in percentiles:
        d[f"p{_qname(q)}_{name}_ms"] = float(np.percentile(a, q))
    return d


def _qname(q: float) -> str:
    return str(int(q)) if float(q).is_integer() else str(q)


def compute_metrics(outputs: list[RequestOutput], duration: float, percentiles: list[float],
                    goodput: dict[str, float] | None = None) -> dict:
    ok = [o for o in outputs if o.success]
    ttfts = [o.ttft for o in ok]
    tpots = [(o.latency - o.ttft) / (o.output_tokens - 1) for o in ok if o.output_tokens > 1]
    itls = [g for o in ok for g in o.itl]
    e2els = [o.latency for o in ok]
    total_in = sum(o.prompt_len for o in ok)
    total_out = sum(o.output_tokens for o in ok)
    m = {"duration": duration, "completed": len(ok), "failed": len(outputs) - len(ok),
         "total_input_tokens": total_in, "total_output_tokens": total_out,
         "request_throughput": len(ok) / duration, "output_throughput": total_out / duration,
         "total_token_throughput": (total_in + total_out) / duration}
    if goodput:
        good = 0
        for o in ok:
            tpot = (o.latency - o.ttft) / (o.output_tokens - 1) if o.output_tokens > 1 else 0.0
            values = {"ttft": o.ttft * 1e3, "tpot": tpot * 1e3, "e2el": o.latency * 1e3}
            good += all(values[k] <= slo for k, slo in goodput.items())
        m["request_goodput"] = good / duration
        m["goodput_slos_ms"] = dict(goodput)
    for name, vals in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        m.update(_stats_ms(name, vals, percentiles))
    m["percentiles"] = list(percentiles)
    return m


def format_metrics(m: dict) -> str:
    lines = ["{s:{c}^50}".format(s=" Serving Benchmark Result ", c="=")]

    def row(label, value, fmt="{:<10.2f}"):
        lines.append(f"{label:<40}" + fmt.format(value))
    row("Successful requests:", m["completed"], "{:<10}")
    row("Failed requests:", m["failed"], "{:<10}")
    row("Benchmark duration (s):", m["duration"])
    row("Total input tokens:", m["total_input_tokens"], "{:<10}")
    row("Total generated tokens:", m["total_output_tokens"], "{:<10}")
    row("Request throughput (req/s):", m["request_throughput"])
    if "request_goodput" in m:
        row("Request goodput (req/s):", m["request_goodput"])
    row("Output token throughput (tok/s):", m["output_throughput"])
    row("Total Token throughput (tok/s):", m["total_token_throughput"])
    for key, title in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
                       ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency")):
        lines.append("{s:{c}^50}".format(s=title, c="-"))
        row(f"Mean {key.upper()} (ms):", m[f"mean_{key}_ms"])
        row(f"Median {key.upper()} (ms):", m[f"median_{key}_ms"])
        row(f"Std {key.upper()} (ms):", m[f"std_{key}_ms"])
        for q in m["percentiles"]:
            row(f"P{_qname(q)} {key.upper()} (ms):", m[f"p{_qname(q)}_{key}_ms"])
    lines.append("=" * 50)
    return "\n".join(lines)


# =============================================================================== the command
def host_load(top: int = 8) -> dict:
    """CPU count, load average and the busiest processes now (pid, %CPU over 0.5 s, command),
    so a result file says what the benchmark shared the machine with."""
    out = {"cpus": os.cpu_count(), "loadavg": list(os.getloadavg())}
    try:
        import psutil
    except ImportError:
        return out
    procs = list(psutil.process_iter(["pid", "cmdline"]))
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(0.5)
    rows = []
    for p in procs:
        try:
            rows.append((p.cpu_percent(None), p.info["pid"], " ".join(p.info["cmdline"] or [])[:160]))
        except psutil.Error:
            pass
    rows.sort(reverse=True)
    out["busiest"] = [{"pid": pid, "cpu_percent": cpu, "cmd": cmd} for cpu, pid, cmd in rows[:top]]
    return out


def _resolve_model(base_url: str, api_key: str | None) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(base_url.rstrip("/") + "/v1/models", headers=headers, timeout=10.0)
        r.raise_for_status()
        return r.json()["data"][0]["id"]
    except Exception as e:
        raise SystemExit(f"autoglm bench serve: no --model given and GET {base_url}/v1/models "
                         f"failed ({type(e).__name__}: {e}); pass --model") from None


def _lower_client_priority() -> None:
    """SCHED_IDLE for this thread and every thread started after it (asyncio's, DDS's)."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _client_priority() -> str:
    """This client's scheduling class, as the OS reports it."""
    return "idle" if os.sched_getscheduler(0) == os.SCHED_IDLE else "normal"


def run_cli(args) -> int:
    validate(args)
    if args.client_priority == "idle":
        _lower_client_priority()
    percentiles = parse_percentiles(args.percentiles)
    slos = parse_goodput(args.goodput)
    model = args.model or _resolve_model(args.base_url, args.api_key)
    samples = build_dataset(args)
    collector = None
    if args.instance:
        from launch.instance_name import instance_running
        from profiler.collect import SpanCollector

        if not instance_running(args.instance):
            print(f"no pipeline of instance {args.instance!r} runs on this machine (`autoglm "
                  "shm ls` lists them): its spans, and the overhead report, may not come",
                  file=sys.stderr)

        collector = SpanCollector(args.instance, node_name=f"bench-serve-{os.getpid()}")
        time.sleep(0.5)  # discovery: spans written before the reader matched are not seen
    load_start = host_load()
    print(f"benchmarking {args.base_url}{args.endpoint} model={model} dataset={args.dataset} "
          f"prompts={args.num_prompts} rate={args.request_rate} burstiness={args.burstiness} "
          f"max_concurrency={args.max_concurrency}", file=sys.stderr)
    try:
        outputs, duration = asyncio.run(run_benchmark(
            base_url=args.base_url, endpoint=args.endpoint, model=model, api_key=args.api_key,
            samples=samples, request_rate=args.request_rate, burstiness=args.burstiness,
            max_concurrency=args.max_concurrency, temperature=args.temperature,
            ignore_eos=args.ignore_eos, seed=args.seed, request_timeout=args.request_timeout,
            test_request=not args.no_test_request))
        spans = None
        if collector is not None:
            time.sleep(0.5)  # the last spans are in flight
            spans = collector.spans()
    finally:
        if collector is not None:
            collector.close()
    metrics = compute_metrics(outputs, duration, percentiles, slos)
    print(format_metrics(metrics))
    errors = [o.error for o in outputs if not o.success]
    if errors:
        print(f"first error: {errors[0]}", file=sys.stderr)
    result = {"date": time.strftime("%Y%m%d-%H%M%S"),
              "command": "autoglm bench serve " + " ".join(sys.argv[sys.argv.index("serve") + 1:]
                                                       if "serve" in sys.argv else []),
              "base_url": args.base_url, "model": model,
              "dataset": args.dataset, "num_prompts": args.num_prompts,
              "random_input_len": args.random_input_len, "random_output_len": args.random_output_len,
              "request_rate": args.request_rate if math.isfinite(args.request_rate) else "inf",
              "burstiness": args.burstiness, "max_concurrency": args.max_concurrency,
              "client_priority": _client_priority(), **metrics,
              "input_lens": [o.prompt_len for o in outputs],
              "output_lens": [o.output_tokens for o in outputs],
              "ttfts": [o.ttft for o in outputs], "itls": [o.itl for o in outputs],
              "e2els": [o.latency for o in outputs], "errors": [o.error for o in outputs],
              "request_ids": [o.request_id for o in outputs],
              # What else the machine was doing: latency on shared cores depends on it.
              "host": {"start": load_start, "end": host_load()}}
    if args.dataset == "random-image":
        result["image_size"], result["num_images"] = args.image_size, args.num_images
    if args.dataset == "random-audio":
        result["audio_seconds"] = args.audio_seconds
    if spans is not None:
        from profiler.stats import overhead_report
        from profiler.view import overhead_lines

        ids = [o.request_id for o in outputs if o.success and o.request_id]
        report = overhead_report(spans, request_ids=ids)
        report["spans_received"] = len(spans)
        if args.record:
            from profiler.recording import write_recording

            keep = set(ids)
            n = write_recording(args.record, [s for s in spans if s.request_id in keep],
                                instance=args.instance)
            print(f"recorded {n} spans of {len(keep)} requests to {args.record}", file=sys.stderr)
        result["pipeline_overhead"] = report
        print(overhead_lines(report))
        if not report["requests"]:
            print(f"no trace spans of the benchmark's requests arrived from instance "
                  f"{args.instance!r} ({len(spans)} spans in all): is tracing on (`autoglm "
                  f"param list --instance {args.instance}`)?", file=sys.stderr)
    if not args.no_json:
        path = Path(args.result_file) if args.result_file else \
            RESULTS_DIR / f"serve-{args.dataset}-{result['date']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {path}", file=sys.stderr)
    return 0 if metrics["completed"] else 1
