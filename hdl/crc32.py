"""CRC-32 of a byte sequence, one byte per cycle."""

from amaranth import Cat, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Crc32", "POLYNOMIAL", "RESIDUE"]

#: The IEEE 802.3 polynomial, bit-reversed (as zlib computes it: least significant bit first).
POLYNOMIAL = 0xEDB88320

#: ``crc`` after a sequence followed by its own CRC (little-endian): a received frame checks out when
#: its CRC bytes, fed in after the data, leave this value.
RESIDUE = 0x2144DF1C


def next_state(state: Value, byte: Value) -> Value:
    """The CRC register after ``byte``: eight steps of the bitwise algorithm, worked out here into one XOR
    of some bits of ``state`` and ``byte`` for each bit."""
    inputs = Cat(state, byte)
    bits = [1 << i for i in range(32)]  # each bit as a mask of the inputs it is the XOR of
    for step in range(8):
        feedback = bits[0] ^ 1 << (32 + step)
        bits = [(bits[i + 1] if i < 31 else 0) ^ (feedback if POLYNOMIAL >> i & 1 else 0) for i in range(32)]
    return Cat(*((inputs & mask).xor() for mask in bits))


class Crc32(wiring.Component):
    """CRC-32 (IEEE, as ``zlib.crc32``) of the bytes added since the last ``clear``.

    Members:
        clear: ``In(1)``: start a new sequence; a byte added in the same cycle is its first.
        valid: ``In(1)``: add ``data`` this cycle.
        data: ``In(8)``.
        crc: ``Out(32)``: the CRC of the sequence so far, from the cycle after its last byte.
    """

    clear: In(1)
    valid: In(1)
    data: In(8)
    crc: Out(32)

    def elaborate(self, platform):
        m = Module()
        state = Signal(32, init=0xFFFFFFFF)
        start = Signal(32)
        m.d.comb += [start.eq(Mux(self.clear, 0xFFFFFFFF, state)), self.crc.eq(~state)]
        with m.If(self.valid):
            m.d.sync += state.eq(next_state(start, self.data))
        with m.Elif(self.clear):
            m.d.sync += state.eq(0xFFFFFFFF)
        return m
