"""What a trace span is, once it has left DDS: a plain record, and the span names the stages use.

A span is one timed piece of work of one request in one process: ``name`` says what
("vision.encode"), ``source`` which node did it, ``pid`` which process, and
``start_ns``/``end_ns`` are ``time.monotonic_ns()`` values. CLOCK_MONOTONIC is one clock for
every process of a machine, so spans written by different stages line up without any clock
alignment. A span with ``start_ns == end_ns`` is an instant (a mark: "first token").

Names are ``<stage>.<what>``: the part before the first dot is the stage the profiler groups
by, so a new span needs no registration here. The constants below are the spans issue 8 asks
every request to leave; ``COMPUTE_SPANS`` are the ones that are model compute (what the
pipeline's own overhead is measured against).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

# --- the spans of one request, in pipeline order ----------------------------------------------
GATEWAY_RECEIVE = "gateway.receive"          # HTTP request read and validated
GATEWAY_MEDIA_DECODE = "gateway.media_decode"  # images/audio decoded, prompt rendered + tokenised
GATEWAY_SHM_WRITE = "gateway.shm_write"      # media + prompt ids written into shm slot pools
GATEWAY_SUBMIT = "gateway.submit"            # request published on the request topic (mark)
VISION_FRAME_READ = "vision.frame_read"      # frame taken from its shm slot (in place)
VISION_RESIZE = "vision.resize"              # frame smart-resized (when the gateway did not)
VISION_ENCODE = "vision.encode"              # image processor + vision tower + merger
VISION_SHM_WRITE = "vision.shm_write"        # image embeddings written into the embeddings pool
AUDIO_ENCODE = "audio.encode"                # log-mel + audio encoder + projection
AUDIO_SHM_WRITE = "audio.shm_write"
DECISION_EMBED_READ = "decision.embed_read"  # embeddings taken from shm (hand-off ends)
DECISION_ADMISSION = "decision.admission"    # request arrival .. all its modalities present
DECISION_PREFILL = "decision.prefill"
DECISION_FIRST_TOKEN = "decision.first_token"  # mark
DECISION_TOKEN = "decision.token"            # one decode step producing one output token
#                                              (written batched, see BATCH_KEY)
DECISION_LAST_TOKEN = "decision.last_token"  # mark
GATEWAY_FIRST_CHUNK = "gateway.first_chunk"  # first content chunk handed to HTTP (mark)
GATEWAY_RESPONSE_SENT = "gateway.response_sent"  # last byte of the response handed to HTTP

REQUEST_SPANS = (GATEWAY_RECEIVE, GATEWAY_MEDIA_DECODE, GATEWAY_SHM_WRITE, VISION_ENCODE,
                 AUDIO_ENCODE, DECISION_ADMISSION, DECISION_PREFILL, DECISION_FIRST_TOKEN,
                 DECISION_TOKEN, DECISION_LAST_TOKEN, GATEWAY_RESPONSE_SENT)

# Model compute: time spent here is the model's, everything else of a request's end-to-end
# time is the pipeline's own overhead (queueing, hand-offs, serialisation, HTTP).
COMPUTE_SPANS = frozenset({VISION_ENCODE, AUDIO_ENCODE, DECISION_PREFILL, DECISION_TOKEN})
# Request preparation (the gateway's image/audio decoding and tokenising, the vision stage's
# resize): not model compute, and not hand-off or queueing either; the overhead report gives
# the overhead with and without it.
PREPROCESS_SPANS = frozenset({GATEWAY_MEDIA_DECODE, VISION_RESIZE})
# Spans that move bulk data through shared memory (the hand-off budget applies to them).
SHM_HANDOFF_SPANS = frozenset({GATEWAY_SHM_WRITE, VISION_FRAME_READ, VISION_SHM_WRITE,
                               AUDIO_SHM_WRITE, DECISION_EMBED_READ})
# Spans a request leaves many of: they form no hop between stages and are summarised.
REPEATED_SPANS = frozenset({DECISION_TOKEN})


# A batched span: one message standing for the same interval of several requests (one decode
# step of the whole batch), so the decode loop writes one span per step, not one per request.
# Its attrs carry BATCH_KEY = [request ids] and, optionally, list-valued attributes of the same
# length (one value per request, e.g. "index"); expand_batch() makes the per-request spans the
# statistics work on. Its own request_id is BATCH_REQUEST_ID.
BATCH_KEY = "requests"
BATCH_REQUEST_ID = "*"
# A bundle: one message carrying several spans of one process (any names and requests), attrs
# SPANS_KEY = [[name, request_id, start_ns, end_ns, {attrs}], ...]. Stages hold their spans
# and write them as one bundle when they go idle, when a request's response is complete, or
# every BUNDLE_MAX_AGE_NS at the latest (profiler.emit.SpanEmitter(bundle=True)): a DDS write
# per span cost the request it timed 20-150 us on a 2-core host (the profiler's process
# wakes too). The message's own name is BUNDLE_NAME.
SPANS_KEY = "spans"
BUNDLE_NAME = "trace.bundle"


def stage_of(name: str) -> str:
    """The stage a span name belongs to: "vision.encode" -> "vision"."""
    return name.split(".", 1)[0]


@dataclass(frozen=True)
class Span:
    request_id: str
    name: str
    source: str
    pid: int
    start_ns: int
    end_ns: int
    attrs: dict = field(default_factory=dict, compare=False, hash=False)
    # When the profiler received it (monotonic ns, 0 if unknown): receive - end = delivery lag.
    rx_ns: int = field(default=0, compare=False)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def stage(self) -> str:
        return stage_of(self.name)

    @property
    def instant(self) -> bool:
        return self.end_ns == self.start_ns

    def to_json_obj(self) -> dict:
        d = {"request_id": self.request_id, "name": self.name, "source": self.source,
             "pid": self.pid, "start_ns": self.start_ns, "end_ns": self.end_ns}
        if self.attrs:
            d["attrs"] = self.attrs
        if self.rx_ns:
            d["rx_ns"] = self.rx_ns
        return d

    @classmethod
    def from_json_obj(cls, d: dict) -> "Span":
        try:
            span = cls(request_id=str(d["request_id"]), name=str(d["name"]),
                       source=str(d["source"]), pid=int(d["pid"]),
                       start_ns=int(d["start_ns"]), end_ns=int(d["end_ns"]),
                       attrs=dict(d.get("attrs") or {}), rx_ns=int(d.get("rx_ns", 0)))
        except KeyError as e:
            raise ValueError(f"span record lacks field {e.args[0]!r}: {d!r}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"span record has a field of the wrong type ({e}): {d!r}") from None
        if span.end_ns < span.start_ns:
            raise ValueError(f"span {span.name!r} ends before it starts: {d!r}")
        return span

    @classmethod
    def from_message(cls, msg, rx_ns: int = 0) -> "Span":
        """From a control.messages.TraceSpan as read from DDS."""
        attrs = {}
        if msg.attrs_json:
            try:
                attrs = json.loads(msg.attrs_json)
            except ValueError:
                attrs = {"_unparsed": msg.attrs_json}
        return cls(request_id=msg.request_id, name=msg.name, source=msg.source,
                   pid=int(msg.pid), start_ns=int(msg.start_mono_ns),
                   end_ns=int(msg.end_mono_ns), attrs=attrs, rx_ns=rx_ns)


def expand_batch(span: "Span") -> list["Span"]:
    """The per-request spans a batched span stands for ([span] itself when it is not one).
    List attributes as long as the batch are split per request; the others are shared, and
    each part gets ``batch`` = the batch size. A bundle (BUNDLE_NAME) becomes the spans it
    carries, each expanded in turn."""
    bundled = span.attrs.get(SPANS_KEY) if span.attrs and span.name == BUNDLE_NAME else None
    if isinstance(bundled, list):
        return [part for name, rid, start, end, attrs in bundled
                for part in expand_batch(Span(request_id=str(rid), name=str(name),
                                              source=span.source, pid=span.pid,
                                              start_ns=int(start), end_ns=int(end),
                                              attrs=dict(attrs or {}), rx_ns=span.rx_ns))]
    rids = span.attrs.get(BATCH_KEY) if span.attrs else None
    if not isinstance(rids, list):
        return [span]
    n = len(rids)
    per = {k: v for k, v in span.attrs.items()
           if k != BATCH_KEY and isinstance(v, list) and len(v) == n}
    shared = {k: v for k, v in span.attrs.items() if k != BATCH_KEY and k not in per}
    return [Span(request_id=str(rid), name=span.name, source=span.source, pid=span.pid,
                 start_ns=span.start_ns, end_ns=span.end_ns,
                 attrs={**shared, **{k: v[i] for k, v in per.items()}, "batch": n},
                 rx_ns=span.rx_ns)
            for i, rid in enumerate(rids)]


def spans_from_message(msg, rx_ns: int = 0) -> list["Span"]:
    """The per-request spans of one TraceSpan message (a batched one expanded)."""
    return expand_batch(Span.from_message(msg, rx_ns))
