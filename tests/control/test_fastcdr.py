"""control.fastcdr against cyclonedds' own codec: the same bytes both ways, on random
samples of every control-plane type, and over a real DDS topic."""
# (no `from __future__ import annotations`: cyclonedds resolves IDL field types at run time)

import dataclasses
import random
import time
import typing
import uuid

import pytest

from control import messages as m
from control import topics as t
from control.plane import ControlPlane

TYPES = [m.ShmRef, m.SamplingParams, m.Request, m.Cancel, m.StageEvent, m.LifecycleCommand,
         m.StageState, m.Heartbeat, m.ConfigValue, m.TraceSpan]
TEXT = ["", "a", "ab", "abc", "héllo", "图片 ✓", "x" * 37]
INT_RANGES = {"int64": (-2**63, 2**63 - 1), "uint64": (0, 2**64 - 1), "int32": (-2**31, 2**31 - 1),
              "uint32": (0, 2**32 - 1), "int16": (-2**15, 2**15 - 1), "uint8": (0, 255)}


def _kind(annotation):
    """The IDL name cyclonedds gives a field ("int64", "sequence[int32]", ...)."""
    meta = getattr(annotation, "__metadata__", None)
    return str(meta[-1]) if meta else annotation


def _value(rng, annotation):
    kind = _kind(annotation)
    if kind is str:
        return rng.choice(TEXT)
    if kind is bool:
        return rng.choice([False, True])
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return sample(rng, kind)
    if kind == "float32":
        return rng.choice([0.0, 1.0, -2.5, 0.125])          # exact in float32
    if kind in INT_RANGES:
        lo, hi = INT_RANGES[kind]
        return rng.choice([0, 1, lo, hi, rng.randint(lo, hi)])
    if kind.startswith("sequence["):
        inner = annotation.__origin__.__args__[0]
        return [_value(rng, inner) for _ in range(rng.choice([0, 1, 2, 5, 33]))]
    raise AssertionError(f"no generator for {kind!r}")


def sample(rng, cls):
    hints = typing.get_type_hints(cls, include_extras=True)
    return cls(**{f.name: _value(rng, hints[f.name]) for f in dataclasses.fields(cls)})


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.__name__)
def test_same_bytes_as_cyclonedds_both_ways(cls):
    rng = random.Random(cls.__name__)
    idl = cls.__idl__
    for _ in range(200):
        x = sample(rng, cls)
        fast = x.serialize()
        assert fast == idl.serialize(x)                      # cyclonedds' generic encoder
        assert idl.deserialize(fast) == x
        assert cls.deserialize(fast) == x
        padded = fast.ljust((len(fast) + 3) & ~3, b"\0")     # as DataWriter.write sends it
        assert cls.deserialize(padded) == x


def test_other_encodings_still_go_to_cyclonedds():
    x = sample(random.Random(1), m.Request)
    v2 = x.serialize(use_version_2=True)
    assert v2[:2] == b"\x00\x07" and v2 == m.Request.__idl__.serialize(x, use_version_2=True)
    assert m.Request.deserialize(v2) == x


def test_bounds_and_types_are_still_enforced():
    with pytest.raises(Exception):
        m.Cancel(request_id=5).serialize()                   # not a string
    with pytest.raises(Exception):
        m.StageEvent(n_tokens=-1).serialize()                # uint32 out of range


def test_a_request_crosses_dds_with_the_compiled_codec():
    x = sample(random.Random(7), m.Request)
    with ControlPlane(f"test-cdr-{uuid.uuid4().hex[:10]}", "a") as a, \
            ControlPlane(a.instance, "b") as b:
        reader, writer = b.reader(t.REQUEST), a.writer(t.REQUEST)
        assert reader.wait_for_writers(1, timeout=10)
        writer.write(x)
        got = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got = reader.take(timeout=0.5)
    assert len(got) == 1
    y = got[0]
    # The writer stamps its own clock and name; every other field arrives as written.
    assert dataclasses.replace(y, t_mono_ns=x.t_mono_ns, source=x.source) == x
