"""The instruction set: one table of fields, read by the encoder, the decoder and the HDL.

Every instruction is 256 bits (32 bytes), little-endian. See docs/isa.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Union

import numpy as np

from mvu.hdl.contract.config import INSTRUCTION_BYTES

__all__ = [
    "Opcode", "Field", "COMMON_FIELDS", "OPCODE_FIELDS", "Load", "Compute", "Store", "Sync", "Finish",
    "Instruction", "Buffer", "decode", "encode_program", "decode_program", "decode_columns", "encode_columns",
    "ProgramError", "TABLE_BYTES",
]

#: Bytes of a STORE's lookup table: one output byte for each of the 256 byte values.
TABLE_BYTES = 256


class ProgramError(ValueError):
    """A program that the machine cannot run: malformed, out of range, or deadlocking."""


class Opcode(IntEnum):
    LOAD = 1
    COMPUTE = 2
    STORE = 3
    SYNC = 4
    FINISH = 5


class Buffer(IntEnum):
    ACT = 0
    WGT = 1


@dataclass(frozen=True)
class Field:
    lsb: int
    width: int
    signed: bool = False

    @property
    def minimum(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def maximum(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    def get(self, word: int) -> int:
        value = (word >> self.lsb) & ((1 << self.width) - 1)
        if self.signed and value >> (self.width - 1):
            value -= 1 << self.width
        return value

    def put(self, value: int) -> int:
        return (value & ((1 << self.width) - 1)) << self.lsb


# Dependency tokens. Units are ordered load -> compute -> store; "prev" and
# "next" name a unit's neighbours in that chain (see docs/isa.md).
COMMON_FIELDS: dict[str, Field] = {
    "opcode": Field(0, 4),
    "pop_prev": Field(4, 1),
    "pop_next": Field(5, 1),
    "push_prev": Field(6, 1),
    "push_next": Field(7, 1),
}

OPCODE_FIELDS: dict[Opcode, dict[str, Field]] = {
    Opcode.LOAD: {
        "buffer": Field(8, 1),
        "window": Field(9, 1),
        "stride_y": Field(10, 4),
        "stride_x": Field(14, 4),
        "fill": Field(24, 8),
        "sram_addr": Field(32, 16),
        "count": Field(48, 16),
        "dram_addr": Field(64, 32),
        "dram_stride": Field(96, 32),
        "row_stride": Field(128, 32),
        "in_h": Field(160, 16),
        "in_w": Field(176, 16),
        "out_w": Field(192, 16),
        "start_y": Field(208, 16),
        "start_x": Field(224, 16),
        "offset_y": Field(240, 8, signed=True),
        "offset_x": Field(248, 8, signed=True),
    },
    Opcode.COMPUTE: {
        "preload": Field(8, 1),
        "accumulate": Field(9, 1),
        "act_signed": Field(10, 1),
        "maximum": Field(11, 1),
        "act_addr": Field(32, 16),
        "count": Field(48, 16),
        "acc_addr": Field(64, 16),
        "wgt_addr": Field(80, 16),
        "act_zero_point": Field(96, 16, signed=True),
    },
    Opcode.STORE: {
        "load_params": Field(8, 1),
        "raw": Field(9, 1),
        "float32_scale": Field(10, 1),
        "load_table": Field(11, 1),
        "lookup": Field(12, 1),
        "add": Field(13, 1),
        "acc_addr": Field(32, 16),
        "count": Field(48, 16),
        "dram_addr": Field(64, 32),
        "dram_stride": Field(96, 32),
        "param_addr": Field(128, 32),
        "out_zero_point": Field(160, 16, signed=True),
        "clamp_min": Field(176, 16, signed=True),
        "clamp_max": Field(192, 16, signed=True),
        "table_addr": Field(208, 32),
    },
    Opcode.SYNC: {},
    Opcode.FINISH: {},
}

# Which token bits each unit may use, and what they mean for it.
_TOKEN_NAMES: dict[Opcode, dict[str, str]] = {
    Opcode.LOAD: {"pop_next": "wait_compute", "push_next": "signal_compute"},
    Opcode.COMPUTE: {"pop_prev": "wait_load", "pop_next": "wait_store",
                     "push_prev": "signal_load", "push_next": "signal_store"},
    Opcode.STORE: {"pop_prev": "wait_compute", "push_prev": "signal_compute"},
    Opcode.SYNC: {},
    Opcode.FINISH: {},
}


_FLAGS = frozenset({"window", "preload", "accumulate", "act_signed", "maximum", "load_params", "raw", "float32_scale",
                    "load_table", "lookup", "add", *(
    name for names in _TOKEN_NAMES.values() for name in names.values())})


@dataclass(frozen=True)
class _Slot:
    """One field of one opcode, resolved once so that encoding and decoding are plain bit arithmetic."""

    name: str
    lsb: int
    mask: int
    minimum: int
    maximum: int
    signed: bool
    kind: type


def _layout(opcode: Opcode) -> tuple[_Slot, ...]:
    pairs = [(name, COMMON_FIELDS[bit]) for bit, name in _TOKEN_NAMES[opcode].items()]
    pairs += list(OPCODE_FIELDS[opcode].items())
    return tuple(_Slot(name, f.lsb, (1 << f.width) - 1, f.minimum, f.maximum, f.signed,
                       bool if name in _FLAGS else Buffer if name == "buffer" else int) for name, f in pairs)


_LAYOUTS = {opcode: _layout(opcode) for opcode in Opcode}
_USED_BITS = {opcode: 0xF | sum(slot.mask << slot.lsb for slot in layout) for opcode, layout in _LAYOUTS.items()}


class _Encodable:
    opcode: ClassVar[Opcode]

    def encode(self) -> bytes:
        word = int(self.opcode)
        for slot in _LAYOUTS[self.opcode]:
            value = int(getattr(self, slot.name))
            if not slot.minimum <= value <= slot.maximum:
                raise ProgramError(
                    f"{self.opcode.name} field {slot.name}={value} does not fit "
                    f"{slot.mask.bit_length()} bits ({slot.minimum}..{slot.maximum})")
            word |= (value & slot.mask) << slot.lsb
        return word.to_bytes(INSTRUCTION_BYTES, "little")


@dataclass(frozen=True)
class Load(_Encodable):
    """Copy ``count`` buffer entries from memory (entry ``i`` from ``dram_addr + i * dram_stride``).

    With ``window`` the entries are the rows of an implicit im2col instead: entry ``i`` is output pixel
    ``(start_y, start_x)`` advanced ``i`` steps in raster order over ``out_w`` columns, read from input pixel
    ``(oy * stride_y + offset_y, ox * stride_x + offset_x)`` at ``dram_addr + iy * row_stride + ix * dram_stride``,
    or ``fill`` in every byte where that pixel lies outside the ``in_h x in_w`` input (docs/isa.md).
    """

    opcode: ClassVar[Opcode] = Opcode.LOAD
    buffer: Buffer
    sram_addr: int
    count: int
    dram_addr: int
    dram_stride: int
    wait_compute: bool = False
    signal_compute: bool = False
    window: bool = False
    row_stride: int = 0
    in_h: int = 0
    in_w: int = 0
    out_w: int = 0
    start_y: int = 0
    start_x: int = 0
    stride_y: int = 0
    stride_x: int = 0
    offset_y: int = 0
    offset_x: int = 0
    fill: int = 0


@dataclass(frozen=True)
class Compute(_Encodable):
    """Stream ``count`` activation entries through the array into the accumulators.

    With ``preload`` the weight tile at ``wgt_addr`` (``rows`` entries) is
    first shifted into the array's idle weight bank, which then becomes the
    active one; without it the active bank is reused. With ``accumulate`` each
    product is added to its accumulator entry, or with ``maximum`` too, the
    larger of the two is kept (max pooling).
    """

    opcode: ClassVar[Opcode] = Opcode.COMPUTE
    act_addr: int
    count: int
    acc_addr: int
    wgt_addr: int = 0
    preload: bool = True
    accumulate: bool = False
    act_signed: bool = False
    act_zero_point: int = 0
    wait_load: bool = False
    wait_store: bool = False
    signal_load: bool = False
    signal_store: bool = False
    maximum: bool = False


@dataclass(frozen=True)
class Store(_Encodable):
    """Write ``count`` accumulator entries to memory through the post-processing unit.

    ``raw`` writes the int32 accumulators unchanged (``4 * cols`` bytes per
    entry); otherwise each entry becomes ``cols`` requantized bytes, in
    fixed point or, with ``float32_scale``, in float32 arithmetic.
    ``load_params`` first reads the per-channel block at ``param_addr``; ``load_table`` then reads the
    256-byte table at ``table_addr``, and ``lookup`` replaces each requantized byte ``q`` by ``table[q]``.
    ``add`` (with ``load_params``) also reads the add block after the parameter block and adds each row's addend
    (``cols`` bytes ``addend_offset`` after the row's place) to the requantized bytes before the lookup
    (:mod:`~mvu.hdl.contract.residual_add`).
    """

    opcode: ClassVar[Opcode] = Opcode.STORE
    acc_addr: int
    count: int
    dram_addr: int
    dram_stride: int
    param_addr: int = 0
    load_params: bool = False
    raw: bool = False
    float32_scale: bool = False
    out_zero_point: int = 0
    clamp_min: int = -128
    clamp_max: int = 127
    table_addr: int = 0
    load_table: bool = False
    lookup: bool = False
    add: bool = False
    wait_compute: bool = False
    signal_compute: bool = False


@dataclass(frozen=True)
class Sync(_Encodable):
    """Wait until every unit has finished every earlier instruction."""

    opcode: ClassVar[Opcode] = Opcode.SYNC


@dataclass(frozen=True)
class Finish(_Encodable):
    """Wait like SYNC, then raise done and stop."""

    opcode: ClassVar[Opcode] = Opcode.FINISH


Instruction = Union[Load, Compute, Store, Sync, Finish]
_CLASSES = {cls.opcode: cls for cls in (Load, Compute, Store, Sync, Finish)}


def decode(raw: bytes, index: int = 0) -> Instruction:
    """Decode one 32-byte instruction; ``index`` only names it in error messages."""
    if len(raw) != INSTRUCTION_BYTES:
        raise ProgramError(f"instruction {index}: expected {INSTRUCTION_BYTES} bytes, got {len(raw)}")
    word = int.from_bytes(raw, "little")
    code = word & 0xF
    try:
        opcode = Opcode(code)
    except ValueError:
        raise ProgramError(f"instruction {index}: unknown opcode {code}") from None
    stray = word & ~_USED_BITS[opcode]
    if stray:
        raise ProgramError(
            f"instruction {index} ({opcode.name}): reserved bits set (bit {stray.bit_length() - 1} "
            f"is the highest); this is not a valid {opcode.name}")
    kwargs = {}
    for slot in _LAYOUTS[opcode]:
        value = (word >> slot.lsb) & slot.mask
        if slot.signed and value > slot.maximum:
            value -= slot.mask + 1
        kwargs[slot.name] = slot.kind(value)
    return _CLASSES[opcode](**kwargs)


def encode_program(instructions: list[Instruction]) -> bytes:
    return b"".join(instruction.encode() for instruction in instructions)


def decode_program(raw: bytes) -> list[Instruction]:
    if len(raw) % INSTRUCTION_BYTES:
        raise ProgramError(f"a program is a whole number of {INSTRUCTION_BYTES}-byte instructions; got {len(raw)} bytes")
    return [decode(raw[i:i + INSTRUCTION_BYTES], i // INSTRUCTION_BYTES)
            for i in range(0, len(raw), INSTRUCTION_BYTES)]


_LANE_BITS = 64
assert all(slot.lsb // _LANE_BITS == (slot.lsb + slot.mask.bit_length() - 1) // _LANE_BITS
           for layout in _LAYOUTS.values() for slot in layout), "a field crosses a 64-bit lane"
#: Per opcode value (unknown ones included, all bits reserved), the bits an instruction may set, as 64-bit lanes.
_USED_LANES = np.zeros((16, INSTRUCTION_BYTES * 8 // _LANE_BITS), dtype=np.uint64)
for _opcode, _bits in _USED_BITS.items():
    _USED_LANES[_opcode] = [(_bits >> (_LANE_BITS * lane)) & ((1 << _LANE_BITS) - 1) for lane in range(_USED_LANES.shape[1])]


def decode_columns(words: np.ndarray) -> dict[str, np.ndarray]:
    """Decode many instructions at once: ``words`` is uint8 ``[n, 32]``.

    Returns ``"opcode"`` and one int64 array per field name (zero where an
    instruction's opcode lacks the field). Malformed words raise as :func:`decode` does.
    """
    lanes = np.ascontiguousarray(words).view("<u8")
    opcode = (lanes[:, 0] & 0xF).astype(np.int64)
    malformed = (lanes & ~_USED_LANES[opcode]).any(axis=1) | ~np.isin(opcode, list(Opcode))
    if malformed.any():
        index = int(np.argmax(malformed))
        decode(words[index].tobytes(), index)
    columns = {"opcode": opcode} | {slot.name: np.zeros(opcode.size, dtype=np.int64)
                                    for layout in _LAYOUTS.values() for slot in layout}
    for op, layout in _LAYOUTS.items():
        chosen = opcode == op
        if not layout or not chosen.any():
            continue
        for slot in layout:
            lane = lanes[chosen, slot.lsb // _LANE_BITS]
            value = ((lane >> np.uint64(slot.lsb % _LANE_BITS)) & np.uint64(slot.mask)).astype(np.int64)
            if slot.signed:
                value -= (value > slot.maximum) * (slot.mask + 1)
            columns[slot.name][chosen] = value
    return columns


def encode_columns(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Encode many instructions at once, the inverse of :func:`decode_columns`: ``"opcode"`` and the field
    columns (a field an instruction's opcode lacks is ignored; a missing column is zero) -> uint8 ``[n, 32]``.

    A value that does not fit its field raises :class:`ProgramError` naming the instruction.
    """
    opcode = np.asarray(columns["opcode"], dtype=np.int64)
    unknown = ~np.isin(opcode, list(Opcode))
    if unknown.any():
        index = int(np.argmax(unknown))
        raise ProgramError(f"instruction {index}: unknown opcode {opcode[index]}")
    lanes = np.zeros((opcode.size, _USED_LANES.shape[1]), dtype="<u8")
    lanes[:, 0] = opcode
    for op, layout in _LAYOUTS.items():
        chosen = np.flatnonzero(opcode == op)
        if not layout or not chosen.size:
            continue
        for slot in layout:
            if slot.name not in columns:
                continue
            values = np.asarray(columns[slot.name], dtype=np.int64)[chosen]
            bad = (values < slot.minimum) | (values > slot.maximum)
            if bad.any():
                index = int(np.argmax(bad))
                raise ProgramError(
                    f"instruction {chosen[index]}: {op.name} field {slot.name}={values[index]} does not fit "
                    f"{slot.mask.bit_length()} bits ({slot.minimum}..{slot.maximum})")
            lanes[chosen, slot.lsb // _LANE_BITS] |= ((values & slot.mask).astype(np.uint64)
                                                      << np.uint64(slot.lsb % _LANE_BITS))
    return lanes.view(np.uint8).reshape(opcode.size, INSTRUCTION_BYTES)
