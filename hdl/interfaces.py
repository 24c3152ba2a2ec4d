"""The interfaces between the hardware blocks, each documented once here.

A signature is written from the side named in its docstring; the other side
holds it flipped (``In`` instead of ``Out``). Streams follow
:mod:`amaranth.lib.stream`: a payload moves in a cycle where ``valid`` and
``ready`` are both high. A struct payload's first field lies in its lowest
bits (``sim/harness.cpp`` reads the core's memory port that way).
"""

from amaranth import ShapeLike, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from mvu.hdl.contract.config import INSTRUCTION_BYTES

__all__ = [
    "INSTRUCTION_BITS", "INSTRUCTIONS", "READ_ID_BITS", "READ_REQUEST", "COMPUTE_JOB", "TokenPort", "MemoryReader",
    "MemoryBus", "write_beat", "masked_write_beat", "MEMORY_PORT_MEMBERS", "MemoryPort", "CsrBus", "RunControl", "Handoff", "weight_rows", "activation_entries",
    "dot_products", "buffer_read", "buffer_write",
]

#: Width of an instruction word.
INSTRUCTION_BITS = 8 * INSTRUCTION_BYTES

#: Instruction words, from the command processor to a unit's queue and from the queue to the unit.
INSTRUCTIONS = stream.Signature(INSTRUCTION_BITS)

#: Width of the tag that tells the core's memory readers apart (:class:`mvu.hdl.core.ReadId`).
READ_ID_BITS = 2

#: A read of ``len`` memory beats from byte address ``addr`` (beat-aligned).
READ_REQUEST = data.StructLayout({"addr": 32, "len": 16})


class TokenPort(wiring.Signature):
    """A unit's end of the dependency tokens it shares with one neighbouring unit (``Out`` in the unit).

    The tokens are counted in :class:`mvu.hdl.token_link.TokenLink`; the ISA's
    ``pop_*`` and ``push_*`` bits say when a unit uses them (docs/isa.md).

    Members:
        avail: ``In(1)``: the neighbour has given at least one token.
        pop: ``Out(1)``: take one of them; only while ``avail``.
        push: ``Out(1)``: give the neighbour a token.
    """

    def __init__(self):
        super().__init__({"avail": In(1), "pop": Out(1), "push": Out(1)})


class MemoryReader(wiring.Signature):
    """A block's port for reading external memory (``Out`` in the block); ``beat_bytes`` wide.

    Members:
        req: ``Out(stream.Signature(READ_REQUEST))``: read requests.
        resp: ``In(stream.Signature(8 * beat_bytes, always_ready=True))``: the beats, in request order,
            lowest bytes first; the reader takes every beat.
    """

    def __init__(self, beat_bytes: int):
        super().__init__({
            "req": Out(stream.Signature(READ_REQUEST)),
            "resp": In(stream.Signature(8 * beat_bytes, always_ready=True)),
        })


def write_beat(beat_bytes: int) -> data.StructLayout:
    """One beat written to external memory: ``data`` to byte address ``addr`` (beat-aligned)."""
    return data.StructLayout({"data": 8 * beat_bytes, "addr": 32})


class MemoryBus(wiring.Signature):
    """The core's port on external memory (``Out`` in the core); ``beat_bytes`` wide.

    Members:
        req: ``Out(stream.Signature(...))``: read requests (``addr``, ``len`` as in :data:`READ_REQUEST`, then
            ``id``: which reader asks).
        resp: ``In(stream.Signature(..., always_ready=True))``: ``data`` beats, in request order, each with the
            ``id`` of its request; the core takes every beat.
        write: ``Out(stream.Signature(write_beat(beat_bytes)))``: writes, one beat each.
    """

    def __init__(self, beat_bytes: int):
        super().__init__({
            "req": Out(stream.Signature(data.StructLayout({"addr": 32, "len": 16, "id": READ_ID_BITS}))),
            "resp": In(stream.Signature(data.StructLayout({"data": 8 * beat_bytes, "id": READ_ID_BITS}),
                                        always_ready=True)),
            "write": Out(stream.Signature(write_beat(beat_bytes))),
        })


def masked_write_beat(beat_bytes: int) -> data.StructLayout:
    """One beat written to memory at byte address ``addr`` (beat-aligned): byte ``i`` of ``data`` where bit
    ``i`` of ``mask`` is set."""
    return data.StructLayout({"data": 8 * beat_bytes, "addr": 32, "mask": beat_bytes})


#: The members of :class:`MemoryPort`; a memory (block RAM, SDRAM controller) has them flipped, beside its own.
MEMORY_PORT_MEMBERS = ("req", "resp", "write")


class MemoryPort(wiring.Signature):
    """A memory's one port, shared by the core and the host link (``Out`` in the arbiter that shares it, ``In``
    in the memory); ``beat_bytes`` wide, reads tagged with ``id_bits``.

    Members:
        req: ``Out(stream.Signature(...))``: read requests: ``addr`` (byte address, beat-aligned), ``len``
            (beats; 0 reads nothing), ``id`` (``id_bits``: the core's reader, and the host link above it).
        resp: ``In(stream.Signature(..., always_ready=True))``: ``data`` beats (lowest bytes first), in request
            order, each with its request's ``id``.
        write: ``Out(stream.Signature(masked_write_beat(beat_bytes)))``: writes of some bytes of one beat.
    """

    def __init__(self, beat_bytes: int, id_bits: int):
        super().__init__({
            "req": Out(stream.Signature(data.StructLayout({"addr": 32, "len": 16, "id": id_bits}))),
            "resp": In(stream.Signature(data.StructLayout({"data": 8 * beat_bytes, "id": id_bits}),
                                        always_ready=True)),
            "write": Out(stream.Signature(masked_write_beat(beat_bytes))),
        })


class CsrBus(wiring.Signature):
    """The control and status registers as the host drives them (``In`` in the core).

    Members:
        addr: ``Out(8)``: word address (:class:`mvu.hdl.contract.csr_map.Csr`).
        wdata: ``Out(32)``: data to write.
        we: ``Out(1)``: write ``wdata`` to ``addr`` this cycle.
        rdata: ``In(32)``: the register at ``addr``, combinationally.
    """

    def __init__(self):
        super().__init__({"addr": Out(8), "wdata": Out(32), "we": Out(1), "rdata": In(32)})


class RunControl(wiring.Signature):
    """Runs of a program, as the control registers drive them (``Out`` there, ``In`` in the command processor).

    Members:
        start: ``Out(1)``: start the program of ``prog_len`` instructions at byte address ``prog_addr``.
        prog_addr: ``Out(32)``.
        prog_len: ``Out(32)``.
        busy: ``In(1)``: a run is under way or waiting to begin.
        starting: ``In(1)``: the cycle a start takes effect, once the previous run has settled.
        done: ``In(1)``: the last run reached FINISH.
        error: ``In(1)``: the last run stopped with ``error_code`` at instruction ``error_pc``.
        error_code: ``In(4)``: a :class:`mvu.hdl.contract.csr_map.ErrorCode`.
        error_pc: ``In(32)``.
        retired: ``In(32)``: instructions dispatched in the last run.
    """

    def __init__(self):
        super().__init__({
            "start": Out(1), "prog_addr": Out(32), "prog_len": Out(32),
            "busy": In(1), "starting": In(1), "done": In(1), "error": In(1),
            "error_code": In(4), "error_pc": In(32), "retired": In(32),
        })


#: A COMPUTE instruction as the compute unit's preloader hands it to the streamer (fields as in the ISA;
#: ``wait_store``, ``signal_load`` and ``signal_store`` are its ``pop_next``, ``push_prev`` and ``push_next``
#: bits, ``swap``: its first entry swaps a preloaded tile in).
COMPUTE_JOB = data.StructLayout({
    "act_addr": 16, "count": 16, "acc_addr": 16, "accumulate": 1, "maximum": 1, "act_signed": 1,
    "act_zero_point": signed(16),
    "wait_store": 1, "signal_load": 1, "signal_store": 1, "swap": 1, "bank": 1,
})


class Handoff(wiring.Signature):
    """COMPUTE instructions from the compute unit's preloader to its streamer (``Out`` in the preloader).

    Members:
        job: ``Out(stream.Signature(COMPUTE_JOB))``: the next instruction, its weight tile preloaded if it has one.
        swapped: ``In(1)``: the streamer issues the first entry of a preloaded tile this cycle.
    """

    def __init__(self):
        super().__init__({"job": Out(stream.Signature(COMPUTE_JOB)), "swapped": In(1)})


def weight_rows(cols: int) -> stream.Signature:
    """Rows of a weight tile, ``cols`` int8 each (``row``), shifted into the array's shadow tile of ``bank`` (0 or 1)
    without backpressure."""
    return stream.Signature(data.StructLayout({"row": data.ArrayLayout(signed(8), cols), "bank": 1}),
                            always_ready=True)


def activation_entries(rows: int) -> stream.Signature:
    """Activation entries into the array without backpressure: ``rows`` bytes, read as int8 (``signed``) or
    uint8 and offset by ``zero_point``; ``first`` swaps the shadow tile of ``bank`` in for this entry and all
    after it."""
    return stream.Signature(data.StructLayout({
        "data": data.ArrayLayout(unsigned(8), rows), "signed": 1, "zero_point": signed(16), "first": 1, "bank": 1,
    }), always_ready=True)


def dot_products(cols: int) -> stream.Signature:
    """Results of the array without backpressure: ``cols`` int32 dot products of one activation entry."""
    return stream.Signature(data.ArrayLayout(signed(32), cols), always_ready=True)


def buffer_read(depth: int, shape: ShapeLike) -> wiring.Signature:
    """A block's end of an on-chip buffer's read port (``Out`` in the block): :class:`ReadPort.Signature` flipped.

    ``addr`` is read into ``data`` in the next cycle; ``en`` stays 1.
    """
    return ReadPort.Signature(addr_width=ceil_log2(depth), shape=shape).flip()


def buffer_write(depth: int, shape: ShapeLike) -> wiring.Signature:
    """A block's end of an on-chip buffer's write port (``Out`` in the block): :class:`WritePort.Signature`
    flipped; ``data`` is written to ``addr`` in a cycle with ``en``."""
    return WritePort.Signature(addr_width=ceil_log2(depth), shape=shape).flip()
