"""The control plane's message types encoded by closures compiled once per type.

cyclonedds-python encodes a sample with a generic interpreter: a Python call per field through
a Buffer object, with key bookkeeping on each, paid by the writer and again by every reader.
Here each type's own machine tree (so cyclonedds still defines the layout) is turned into one
encoder and one decoder closure per field, once. `python -m benchmarks.control_codec` times
both side by side: a Request took 28 -> 8 us to encode warm, 113 -> 53 us with a cold cache,
on the 2-core host (benchmarks/results/control-codec-cpu.json). The bytes are cyclonedds' own:
tests/control/test_fastcdr.py checks random samples both ways against it.

Only what these types use is handled: XCDR1 (their native encoding), final structs, strings,
primitives, sequences of primitives, strings and structs, on a little-endian host. A call that
asks for anything else (XCDR2, another byte order, a caller's buffer) takes cyclonedds' path.
"""
from __future__ import annotations

import struct
import sys

from cyclonedds.idl import _machinery as mc

HEADER = b"\x00\x01\x00\x00"   # encapsulation: plain CDR (XCDR1), little-endian
_U32 = struct.Struct("<I")
_ZEROS = bytes(8)
_LITTLE = sys.byteorder == "little"


class Unsupported(TypeError):
    """A machine this module has no closure for, raised when the type is installed: extend
    this module, or leave the type out of control.messages._install_codecs."""


# Offsets count from the end of the 4-byte header, as CDR alignment does: the pad before a
# field of alignment `a` written at buffer length L is (-(L - 4)) % a.

def _encoder(m):
    t = type(m)
    if t is mc.PrimitiveMachine:
        pack, a = struct.Struct("<" + m.code).pack, m.alignment

        def enc(out, v):
            out += _ZEROS[:(4 - len(out)) % a]
            out += pack(v)
        return enc
    if t is mc.StringMachine:
        bound = m.bound

        def enc(out, v):
            b = v.encode("utf-8")
            if bound and len(v) > bound:
                raise ValueError(f"string of {len(v)} characters, bound {bound}")
            out += _ZEROS[:(-len(out)) % 4]
            out += _U32.pack(len(b) + 1)
            out += b
            out += b"\0"
        return enc
    if t is mc.PlainCdrV2SequenceOfPrimitiveMachine:
        code, a, cap = m.code, m.alignment, m.max_length

        def enc(out, v):
            n = len(v)
            if cap is not None and n > cap:
                raise ValueError(f"sequence of {n} items, bound {cap}")
            out += _ZEROS[:(-len(out)) % 4]
            out += _U32.pack(n)
            if n:
                out += _ZEROS[:(4 - len(out)) % a]
                out += struct.pack(f"<{n}{code}", *v)
        return enc
    if t is mc.SequenceMachine and not m.add_size_header:
        item, cap = _encoder(m.submachine), m.maxlen

        def enc(out, v):
            if cap is not None and len(v) > cap:
                raise ValueError(f"sequence of {len(v)} items, bound {cap}")
            out += _ZEROS[:(-len(out)) % 4]
            out += _U32.pack(len(v))
            for x in v:
                item(out, x)
        return enc
    if t is mc.InstanceMachine and not m.use_version_2:
        return _encoder(_struct_machine(m.type))
    if t is mc.StructMachine:
        fields = [(name, _encoder(sub)) for name, sub in m.members_machines.items()]

        def enc(out, v):
            for name, f in fields:
                f(out, getattr(v, name))
        return enc
    raise Unsupported(f"no encoder for {t.__name__}")


def _decoder(m):
    t = type(m)
    if t is mc.PrimitiveMachine:
        unpack, a, size = struct.Struct("<" + m.code).unpack_from, m.alignment, m.size

        def dec(buf, pos):
            pos += (4 - pos) % a
            return unpack(buf, pos)[0], pos + size
        return dec
    if t is mc.StringMachine:
        def dec(buf, pos):
            pos += (-pos) % 4
            n = _U32.unpack_from(buf, pos)[0]
            pos += 4
            return bytes(buf[pos:pos + n - 1]).decode("utf-8"), pos + n
        return dec
    if t is mc.PlainCdrV2SequenceOfPrimitiveMachine:
        code, a, size = m.code, m.alignment, m.size

        def dec(buf, pos):
            pos += (-pos) % 4
            n = _U32.unpack_from(buf, pos)[0]
            pos += 4
            if not n:
                return [], pos
            pos += (4 - pos) % a
            return list(struct.unpack_from(f"<{n}{code}", buf, pos)), pos + n * size
        return dec
    if t is mc.SequenceMachine and not m.add_size_header:
        item = _decoder(m.submachine)

        def dec(buf, pos):
            pos += (-pos) % 4
            n = _U32.unpack_from(buf, pos)[0]
            pos += 4
            out = []
            for _ in range(n):
                x, pos = item(buf, pos)
                out.append(x)
            return out, pos
        return dec
    if t is mc.InstanceMachine and not m.use_version_2:
        return _decoder(_struct_machine(m.type))
    if t is mc.StructMachine:
        cls, fields = m.type, [_decoder(sub) for sub in m.members_machines.values()]

        def dec(buf, pos):
            values = []
            for f in fields:
                x, pos = f(buf, pos)
                values.append(x)
            return cls(*values), pos
        return dec
    raise Unsupported(f"no decoder for {t.__name__}")


def _struct_machine(cls):
    idl = cls.__idl__
    idl.populate()
    if idl.default_version != 1:
        raise Unsupported(f"{cls.__name__} is natively XCDR2")
    return idl.v1_machine


def install(cls) -> None:
    """Give `cls` (an IdlStruct) the compiled codec for the calls DDS makes; other calls, and
    every call on a big-endian host, keep cyclonedds' own."""
    if not _LITTLE:
        return
    machine = _struct_machine(cls)
    encode, decode = _encoder(machine), _decoder(machine)
    generic_serialize, generic_deserialize = cls.serialize, cls.deserialize.__func__

    def serialize(self, buffer=None, endianness=None, use_version_2=None):
        if buffer is not None or endianness is not None or use_version_2:
            return generic_serialize(self, buffer=buffer, endianness=endianness,
                                     use_version_2=use_version_2)
        out = bytearray(HEADER)
        encode(out, self)
        return bytes(out)

    def deserialize(klass, data, has_header=True, use_version_2=None):
        if klass is cls and has_header and use_version_2 is None and data[:2] == HEADER[:2]:
            return decode(data, 4)[0]
        return generic_deserialize(klass, data, has_header=has_header, use_version_2=use_version_2)

    cls.serialize = serialize
    cls.deserialize = classmethod(deserialize)
