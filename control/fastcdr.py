"""The control plane's message types encoded by one generated function per type and direction.

cyclonedds-python encodes a sample with a generic interpreter: a Python call per field through
a Buffer object, with key bookkeeping on each, paid by the writer and again by every reader.
Here each type's own machine tree (so cyclonedds still defines the layout) is turned once into
the source of one straight-line encoder and one decoder, nested structs and sequences inlined,
and compiled: no call per field. `source(cls)` shows the code. `python -m
benchmarks.control_codec` times it against cyclonedds side by side
(benchmarks/results/control-codec-cpu.json). Most of what a stage pays for a message is the
cold-cache case, right after the model's step or a wake-up, where every Python frame and
bytecode is a cache miss; straight-line code has the fewest. The bytes are cyclonedds' own:
tests/control/test_fastcdr.py checks random samples both ways against it.

Only what these types use is handled: XCDR1 (their native encoding), final structs, strings,
primitives, sequences of primitives, strings and structs, on a little-endian host. A call that
asks for anything else (XCDR2, another byte order, a caller's buffer) takes cyclonedds' path.

Offsets count from the end of the 4-byte header, as CDR alignment does: the pad before a field
of alignment `a` at buffer length L is (4 - L) % a.
"""
from __future__ import annotations

import struct
import sys

from cyclonedds.idl import _machinery as mc

HEADER = b"\x00\x01\x00\x00"   # encapsulation: plain CDR (XCDR1), little-endian
_LITTLE = sys.byteorder == "little"


class Unsupported(TypeError):
    """A machine this module has no code for, raised when the type is installed: extend this
    module, or leave the type out of control.messages._install_codecs."""


class _Source:
    """Lines of one generated function, its constants, fresh local names, and what is known
    of the offset where the next value goes: ``known = (m, r)`` says offset % m == r (m is
    1, 2, 4 or 8), so an alignment pad the layout fixes is written as a constant, or left
    out, instead of being computed at run time."""

    def __init__(self, decoding: bool, consts: dict | None = None):
        self.decoding = decoding
        self.lines: list[str] = []
        self.consts = consts if consts is not None else {
            "U32_pack": struct.Struct("<I").pack, "U32_unpack": struct.Struct("<I").unpack_from,
            "ZEROS": bytes(8), "struct": struct}
        self.known = (8, 0)    # the first value follows the header
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}{self._n}"

    def const(self, key: str, value) -> str:
        """The global name of a constant; one key names one value."""
        self.consts.setdefault(key, value)
        return key

    def add(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def align(self, indent: int, a: int) -> None:
        """Pad (encoding) or skip (decoding) to a multiple of `a` bytes."""
        m, r = self.known
        if a <= 1:
            return
        if a <= m:                       # the pad is fixed by the layout
            pad = (-r) % a
            if pad:
                self.add(indent, f"pos += {pad}" if self.decoding else f"out += ZEROS[:{pad}]")
            self.known = (m, (r + pad) % m)
        else:
            self.add(indent, f"pos += (4 - pos) % {a}" if self.decoding
                     else f"out += ZEROS[:(4 - len(out)) % {a}]")
            self.known = (a, 0)

    def advance(self, nbytes: int) -> None:
        m, r = self.known
        self.known = (m, (r + nbytes) % m)

    def only_aligned_to(self, m: int) -> None:
        """Past data of a length known only at run time: offset % m == 0 is all that holds."""
        self.known = (m, 0)


def _struct_of(m):
    """The StructMachine behind a field's machine, or None."""
    if type(m) is mc.InstanceMachine and not m.use_version_2:
        return _struct_machine(m.type)
    if type(m) is mc.StructMachine:
        return m
    return None


def _loop_body(src: _Source, ind: int, emit) -> None:
    """Lines of one iteration over a sequence's items, after its count (offset % 4 == 0).
    Written for that start when an item also ends 4-aligned, else for an unknown start."""
    start, mark = len(src.lines), src._n
    src.only_aligned_to(4)
    emit()
    m, r = src.known
    if m < 4 or r % 4:
        del src.lines[start:]
        src._n = mark
        src.only_aligned_to(1)
        emit()
        src.only_aligned_to(1)
    else:
        src.only_aligned_to(4)


def _encode(src: _Source, m, expr: str, ind: int) -> None:
    """Lines appending the CDR of the value `expr` (an expression evaluated once) to `out`."""
    t = type(m)
    if t is mc.PrimitiveMachine:
        src.align(ind, m.alignment)
        pack = src.const("pack_" + _code_name(m.code), struct.Struct("<" + m.code).pack)
        src.add(ind, f"out += {pack}({expr})")
        src.advance(m.size)
    elif t is mc.StringMachine:
        b = src.name("b")
        if m.bound:
            src.add(ind, f"if len({expr}) > {m.bound}: "
                         f"raise ValueError('string longer than its bound {m.bound}')")
        src.add(ind, f"{b} = {expr}.encode('utf-8')")
        src.align(ind, 4)
        src.add(ind, f"out += U32_pack(len({b}) + 1)")
        src.add(ind, f"out += {b}")
        src.add(ind, "out += b'\\0'")
        src.only_aligned_to(1)
    elif t is mc.PlainCdrV2SequenceOfPrimitiveMachine:
        v = src.name("seq")
        src.add(ind, f"{v} = {expr}")
        _bound(src, ind, v, m.max_length)
        src.align(ind, 4)
        src.add(ind, f"out += U32_pack(len({v}))")
        src.add(ind, f"if {v}:")
        if m.alignment > 4:   # the count left the buffer 4-aligned
            src.add(ind + 1, f"out += ZEROS[:(4 - len(out)) % {m.alignment}]")
        src.add(ind + 1, f"out += struct.pack('<%d{m.code}' % len({v}), *{v})")
        src.only_aligned_to(min(4, m.size))
    elif t is mc.SequenceMachine and not m.add_size_header:
        v, x = src.name("seq"), src.name("item")
        src.add(ind, f"{v} = {expr}")
        _bound(src, ind, v, m.maxlen)
        src.align(ind, 4)
        src.add(ind, f"out += U32_pack(len({v}))")
        src.add(ind, f"for {x} in {v}:")
        _loop_body(src, ind + 1, lambda: _encode(src, m.submachine, x, ind + 1))
    elif _struct_of(m) is not None:
        s = src.name("s")
        src.add(ind, f"{s} = {expr}")
        for field, sub in _struct_of(m).members_machines.items():
            _encode(src, sub, f"{s}.{field}", ind)
    else:
        raise Unsupported(f"no encoder for {t.__name__}")


def _code_name(code: str) -> str:
    """A struct format code as part of a name ("?", a bool's, is not one)."""
    return code if code.isalnum() else "bool" if code == "?" else f"x{ord(code):02x}"


def _bound(src: _Source, ind: int, v: str, cap) -> None:
    if cap is not None:
        src.add(ind, f"if len({v}) > {cap}: raise ValueError('sequence longer than its bound {cap}')")


def _decode(src: _Source, m, target: str, ind: int) -> None:
    """Lines reading one value of machine `m` at `pos` of `buf` into the local `target`."""
    t = type(m)
    if t is mc.PrimitiveMachine:
        src.align(ind, m.alignment)
        unpack = src.const("unpack_" + _code_name(m.code), struct.Struct("<" + m.code).unpack_from)
        src.add(ind, f"{target} = {unpack}(buf, pos)[0]")
        src.add(ind, f"pos += {m.size}")
        src.advance(m.size)
    elif t is mc.StringMachine:
        n = src.name("n")
        src.align(ind, 4)
        src.add(ind, f"{n} = U32_unpack(buf, pos)[0]")
        src.add(ind, f"{target} = str(buf[pos + 4:pos + 3 + {n}], 'utf-8')")
        src.add(ind, f"pos += 4 + {n}")
        src.only_aligned_to(1)
    elif t is mc.PlainCdrV2SequenceOfPrimitiveMachine:
        n = src.name("n")
        src.align(ind, 4)
        src.add(ind, f"{n} = U32_unpack(buf, pos)[0]")
        src.add(ind, "pos += 4")
        src.add(ind, f"if {n}:")
        if m.alignment > 4:
            src.add(ind + 1, f"pos += (4 - pos) % {m.alignment}")
        src.add(ind + 1, f"{target} = list(struct.unpack_from('<%d{m.code}' % {n}, buf, pos))")
        src.add(ind + 1, f"pos += {n} * {m.size}")
        src.add(ind, "else:")
        src.add(ind + 1, f"{target} = []")
        src.only_aligned_to(min(4, m.size))
    elif t is mc.SequenceMachine and not m.add_size_header:
        n, x = src.name("n"), src.name("item")
        src.align(ind, 4)
        src.add(ind, f"{n} = U32_unpack(buf, pos)[0]")
        src.add(ind, "pos += 4")
        src.add(ind, f"{target} = []")
        src.add(ind, f"for _ in range({n}):")

        def item():
            _decode(src, m.submachine, x, ind + 1)
            src.add(ind + 1, f"{target}.append({x})")
        _loop_body(src, ind + 1, item)
    elif _struct_of(m) is not None:
        sm = _struct_of(m)
        fields = [src.name("f") for _ in sm.members_machines]
        for f, sub in zip(fields, sm.members_machines.values()):
            _decode(src, sub, f, ind)
        cls = src.const("cls_" + sm.type.__name__, sm.type)
        src.add(ind, f"{target} = {cls}({', '.join(fields)})")
    else:
        raise Unsupported(f"no decoder for {t.__name__}")


def _struct_machine(cls):
    idl = cls.__idl__
    idl.populate()
    if idl.default_version != 1:
        raise Unsupported(f"{cls.__name__} is natively XCDR2")
    return idl.v1_machine


def _generate(cls) -> tuple[str, dict]:
    """The source of `encode(value) -> bytes` and `decode(buf) -> value` for `cls`, and the
    constants it refers to."""
    machine = _struct_machine(cls)
    enc = _Source(decoding=False)
    enc.add(0, "def encode(value):")
    enc.add(1, "out = bytearray(HEADER)")
    _encode(enc, machine, "value", 1)
    enc.add(1, "return bytes(out)")
    dec = _Source(decoding=True, consts=enc.consts)   # one namespace for both
    dec.add(0, "def decode(buf):")
    dec.add(1, "pos = 4")
    _decode(dec, machine, "value", 1)
    dec.add(1, "return value")
    namespace = {**enc.consts, "HEADER": HEADER}
    return "\n".join(enc.lines + [""] + dec.lines) + "\n", namespace


def source(cls) -> str:
    """The generated code of `cls`, for reading and debugging."""
    return _generate(cls)[0]


def install(cls) -> None:
    """Give `cls` (an IdlStruct) the generated codec for the calls DDS makes; other calls, and
    every call on a big-endian host, keep cyclonedds' own."""
    if not _LITTLE:
        return
    code, namespace = _generate(cls)
    exec(compile(code, f"<control.fastcdr: {cls.__name__}>", "exec"), namespace)
    encode, decode = namespace["encode"], namespace["decode"]
    generic_serialize, generic_deserialize = cls.serialize, cls.deserialize.__func__

    def serialize(self, buffer=None, endianness=None, use_version_2=None):
        if buffer is not None or endianness is not None or use_version_2:
            return generic_serialize(self, buffer=buffer, endianness=endianness,
                                     use_version_2=use_version_2)
        return encode(self)

    def deserialize(klass, data, has_header=True, use_version_2=None):
        if klass is cls and has_header and use_version_2 is None and data[:2] == HEADER[:2]:
            return decode(data)
        return generic_deserialize(klass, data, has_header=has_header, use_version_2=use_version_2)

    cls.serialize = serialize
    cls.deserialize = classmethod(deserialize)
