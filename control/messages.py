"""Message types of the control plane, as Cyclone DDS IDL structs.

(No `from __future__ import annotations` here: cyclonedds resolves the field types at run time.)

Every message starts with the same three header fields:

* ``request_id``: the request it concerns ("" when none, e.g. heartbeats);
* ``t_mono_ns``: ``time.monotonic_ns()`` when it was written. CLOCK_MONOTONIC is one
  clock for every process of a machine, so receive time minus ``t_mono_ns`` is the one-way
  latency, and spans of different stages line up. ``control.plane.Writer.write`` stamps it;
* ``source``: the node (process) that wrote it; ``Writer.write`` fills it when empty.

Bulk data never travels here: a request or event points at shared memory with a
``ShmRef`` (channel, slot, generation), and the reader checks the generation after reading
the slot, so a slot reused under it is detected.

Fields are typed (no opaque blobs except ``Request.extra``), so `cyclonedds typeof` and
`cyclonedds subscribe` can show them, and ``to_dict`` turns any message into plain data.
Enumerations are strings (constants below) rather than IDL enums: readable in every tool,
and a new state does not change the type.
"""

import dataclasses
from dataclasses import dataclass, field

from cyclonedds.idl import IdlStruct
from cyclonedds.idl.annotations import key
from cyclonedds.idl.types import float32, int16, int32, int64, sequence, uint8, uint32, uint64

# ---------------------------------------------------------------------------------------
# String enumerations


class StageStates:
    """Values of ``StageState.state`` and ``Heartbeat.state``: a stage's lifecycle
    (runtime.lifecycle.State enforces its transitions)."""

    STARTING = "starting"  # process up, loading weights / allocating
    READY = "ready"  # idle, accepting work
    BUSY = "busy"  # working on at least one request
    STOPPING = "stopping"  # shutting down: no new work
    DEAD = "dead"  # exited, or declared dead by the supervisor; ``detail`` says why
    ALL = (STARTING, READY, BUSY, STOPPING, DEAD)


class LifecycleCommands:
    """Values of ``LifecycleCommand.command``."""

    PAUSE = "pause"
    RESUME = "resume"
    DRAIN = "drain"
    SHUTDOWN = "shutdown"
    RELOAD_CONFIG = "reload_config"
    ALL = (PAUSE, RESUME, DRAIN, SHUTDOWN, RELOAD_CONFIG)
    EVERY_STAGE = "*"  # ``target`` value addressing every stage


class EventKinds:
    """Values of ``StageEvent.kind``."""

    MODALITY_READY = "modality_ready"  # embeddings of ``modality`` are in ``output``
    DONE = "done"  # the stage finished the request
    CANCELLED = "cancelled"
    ERROR = "error"  # ``detail`` and ``code`` say what went wrong
    # From the launcher, ``source`` the stage that died: requests it had not taken yet (not on
    # its in-flight board) will not be served by it, nor by its restart (requests are not kept
    # for late readers). ``detail`` says why it died.
    STAGE_LOST = "stage_lost"
    ALL = (MODALITY_READY, DONE, CANCELLED, ERROR, STAGE_LOST)


class Modalities:
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    ALL = (IMAGE, VIDEO, AUDIO)


# ---------------------------------------------------------------------------------------
# Building blocks


@dataclass
class ShmRef(IdlStruct, typename="autoglm.control.ShmRef"):
    """Where a payload lies in shared memory; ``channel == ""`` means "no payload"."""

    channel: str = ""
    slot: uint32 = 0
    generation: uint64 = 0
    nbytes: uint64 = 0


@dataclass
class SamplingParams(IdlStruct, typename="autoglm.control.SamplingParams"):
    max_new_tokens: int32 = 256
    temperature: float32 = 1.0
    top_p: float32 = 1.0
    top_k: int32 = 0  # 0: no top-k cut
    repetition_penalty: float32 = 1.0
    seed: int64 = 0
    seeded: bool = False  # False: no seed (any int64 is a seed, negative ones too)
    stop_token_ids: sequence[int32] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# Topic types


# Prompts up to this many ids travel inside the Request (4 KiB: one datagram); longer ones
# through the prompts pool, which keeps a 3,000-token screenshot prompt off the control plane.
INLINE_PROMPT_TOKENS = 1024


@dataclass
class Request(IdlStruct, typename="autoglm.control.Request"):
    """A generation request, from the gateway to the stages that serve it."""

    request_id: str = ""
    t_mono_ns: int64 = 0
    source: str = ""
    prompt: ShmRef = field(default_factory=ShmRef)  # int32 token ids (long prompts)
    n_prompt_tokens: uint32 = 0
    # The ids themselves when the prompt is short (at most INLINE_PROMPT_TOKENS; ``prompt``
    # then has no channel): one serialisation instead of a pool write and a pool read.
    prompt_ids: sequence[int32] = field(default_factory=list)
    # Modalities whose embeddings the decision stage must wait for (subset of Modalities.ALL).
    modalities: sequence[str] = field(default_factory=list)
    # Raw inputs for the perception stages (frames, PCM), in ``modalities`` order.
    media: sequence[ShmRef] = field(default_factory=list)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: int32 = 0
    deadline_mono_ns: int64 = 0  # 0: no deadline
    # msgpack map of options not (yet) typed above; empty when none.
    extra: sequence[uint8] = field(default_factory=list)


@dataclass
class Cancel(IdlStruct, typename="autoglm.control.Cancel"):
    request_id: str = ""
    t_mono_ns: int64 = 0
    source: str = ""
    reason: str = ""


@dataclass
class StageEvent(IdlStruct, typename="autoglm.control.StageEvent"):
    """Progress of one request in one stage (``source`` is the stage)."""

    request_id: str = ""
    t_mono_ns: int64 = 0
    source: str = ""
    kind: str = ""  # EventKinds
    modality: str = ""  # Modalities, for MODALITY_READY
    output: ShmRef = field(default_factory=ShmRef)  # e.g. the embeddings slot
    n_tokens: uint32 = 0  # e.g. image tokens produced, tokens generated
    grid_thw: sequence[int32] = field(default_factory=list)  # vision (t, h, w) grids, flat
    code: int32 = 0  # error code, 0 when none
    detail: str = ""  # error message or free text
    t_begin_ns: int64 = 0  # done/cancelled/error: when the stage took the request (0: never)


@dataclass
class LifecycleCommand(IdlStruct, typename="autoglm.control.LifecycleCommand"):
    """An order to one stage (``target``) or to all ("*"); ``request_id`` is the command id."""

    request_id: str = ""
    t_mono_ns: int64 = 0
    source: str = ""
    target: str = ""
    command: str = ""  # LifecycleCommands
    argument: str = ""


@dataclass
class StageState(IdlStruct, typename="autoglm.control.StageState"):
    """A stage's lifecycle state; keyed by stage, the last value per stage is kept."""

    stage: str = ""
    request_id: str = ""  # the command that caused the change, if any
    t_mono_ns: int64 = 0
    source: str = ""
    state: str = ""  # StageStates
    pid: int32 = 0
    cores: sequence[int16] = field(default_factory=list)  # CPU cores it is pinned to
    restarts: uint32 = 0
    detail: str = ""
    key("stage")


@dataclass
class Heartbeat(IdlStruct, typename="autoglm.control.Heartbeat"):
    """Sent every second by every stage; keyed by stage."""

    stage: str = ""
    request_id: str = ""
    t_mono_ns: int64 = 0
    source: str = ""
    seq: uint64 = 0
    pid: int32 = 0
    state: str = ""  # StageStates
    in_flight: uint32 = 0  # requests the stage is working on
    key("stage")


@dataclass
class ConfigValue(IdlStruct, typename="autoglm.control.ConfigValue"):
    """A dynamic setting; keyed by name, the last value per name reaches late joiners.
    ``value_json`` is JSON text (readable in any DDS tool), or CONFIG_WITHDRAWN: the setter
    takes its value back (one no stage applied, one set for a while), and the launcher stops
    keeping the name."""

    name: str = ""
    request_id: str = ""
    t_mono_ns: int64 = 0
    source: str = ""
    value_json: str = "null"
    key("name")


# Never JSON, so never a value a stage could take.
CONFIG_WITHDRAWN = ""


@dataclass
class ConfigAnswer(IdlStruct, typename="autoglm.control.ConfigAnswer"):
    """A stage's answer (``source``) to the config value ``request_id``: ``outcome`` is
    "applied", "refused: WHY" or "ignored: ..." (runtime.stage's CONFIG_* words)."""

    request_id: str = ""
    t_mono_ns: int64 = 0
    source: str = ""
    name: str = ""
    value_json: str = ""
    outcome: str = ""


@dataclass
class TraceSpan(IdlStruct, typename="autoglm.control.TraceSpan"):
    """A timed piece of work of one request in one stage (``source``)."""

    request_id: str = ""
    t_mono_ns: int64 = 0
    source: str = ""
    name: str = ""
    pid: int32 = 0
    start_mono_ns: int64 = 0
    end_mono_ns: int64 = 0
    attrs_json: str = ""  # JSON object of extra attributes, "" when none


MESSAGE_TYPES = (Request, Cancel, StageEvent, LifecycleCommand, StageState, Heartbeat,
                 ConfigValue, TraceSpan)


def to_dict(message) -> dict:
    """A message (or nested struct) as plain Python data, ready for json/msgpack/printing."""
    if not dataclasses.is_dataclass(message):
        raise TypeError(f"{type(message).__name__} is not a control-plane message")
    return {f.name: _plain(getattr(message, f.name)) for f in dataclasses.fields(message)}


def _plain(value):
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def pack_extra(options: dict) -> list:
    """``Request.extra`` from a dict of untyped options (msgpack)."""
    import msgpack

    if not isinstance(options, dict):
        raise TypeError(f"Request.extra must be built from a dict, got {type(options).__name__}")
    return list(msgpack.packb(options, use_bin_type=True)) if options else []


def unpack_extra(extra) -> dict:
    """The dict packed into ``Request.extra`` ({} when empty)."""
    import msgpack

    return msgpack.unpackb(bytes(extra), raw=False) if extra else {}


# Every type above gets the compiled codec (control.fastcdr): the same bytes as cyclonedds'
# generic one, several times faster to write and to read.
def _install_codecs() -> None:
    from . import fastcdr

    for cls in (ShmRef, SamplingParams, Request, Cancel, StageEvent, LifecycleCommand,
                StageState, Heartbeat, ConfigValue, TraceSpan):
        fastcdr.install(cls)


_install_codecs()
