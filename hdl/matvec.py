"""The matrix-vector datapath: zero-point stage, input skew, systolic array, output deskew."""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.interfaces import activation_entries, dot_products, weight_rows
from mvu.hdl.pipeline import delayed, staggered
from mvu.hdl.systolic_array import SystolicArray

__all__ = ["MatrixVectorUnit"]


class MatrixVectorUnit(wiring.Component):
    """Multiplies one activation vector per cycle by the active ``rows`` x ``cols`` weight tile.

    Inputs are row-aligned: an entry on ``acts`` holds ``rows`` bytes, read
    as int8 or uint8 and offset by its zero point. Its ``cols`` int32 dot
    products leave on ``sums`` exactly :attr:`latency` cycles later. Each row
    on ``weights`` (``cols`` int8) shifts into the shadow tile of its bank; a
    tile is ``rows`` such shifts, last row first. The entry flagged ``first``
    and all after it use the shadow tile of the entry's bank, which becomes
    the active one.

    Timing rules the controller keeps (``R = rows``): a tile's shifts into a
    bank may start ``R`` cycles after the first entry of the tile that bank
    held last entered (one shift a cycle, across both banks), and the new
    tile's first entry may enter in the cycle of its last shift (``R - 1``
    cycles after the first). With the banks taken in turn, tiles of at least
    ``R`` entries stream back to back.
    """

    def __init__(self, config: HardwareConfig):
        self.config = config
        R, C = config.rows, config.cols
        #: Cycles from an input to its output.
        self.latency = R + C + 2
        super().__init__({"weights": In(weight_rows(C)), "acts": In(activation_entries(R)),
                          "sums": Out(dot_products(C))})

    def elaborate(self, platform):
        m = Module()
        R, C = self.config.rows, self.config.cols
        m.submodules.array = array = SystolicArray(R, C, self.config.psum_bits)

        # Stage 0: offset by the zero point. Valid values lie in -255..255.
        centred = [Signal(signed(9), name=f"centred_{r}", reset_less=True) for r in range(R)]
        first0 = Signal()
        bank0 = Signal()
        valid0 = Signal()
        entry = self.acts.payload
        for r in range(R):
            byte = entry.data[r]
            value = Mux(entry.signed, byte.as_signed(), byte.as_unsigned())
            m.d.sync += centred[r].eq(value - entry.zero_point)
        m.d.sync += [first0.eq(self.acts.valid & entry.first), bank0.eq(entry.bank), valid0.eq(self.acts.valid)]

        # Row r enters r cycles after row 0; weight column c shifts c cycles after column 0.
        acts = staggered(m, centred, "act_skew")
        firsts = staggered(m, [first0] * R, "first_skew")
        banks = staggered(m, [bank0] * R, "bank_skew")
        wl_data = staggered(m, [self.weights.payload.row[c] for c in range(C)], "wl_data_skew")
        wl_en = staggered(m, [self.weights.valid] * C, "wl_en_skew")
        wl_bank = staggered(m, [self.weights.payload.bank] * C, "wl_bank_skew")
        for r in range(R):
            m.d.comb += [array.act[r].eq(acts[r]), array.act_first[r].eq(firsts[r]), array.act_bank[r].eq(banks[r])]
        for c in range(C):
            m.d.comb += [array.wl_data[c].eq(wl_data[c]), array.wl_en[c].eq(wl_en[c]),
                         array.wl_bank[c].eq(wl_bank[c])]

        # Column c leaves the array c cycles after column 0: realign.
        realigned = staggered(m, [array.psum[c] for c in reversed(range(C))], "deskew")
        for c in range(C):
            m.d.comb += self.sums.payload[c].eq(realigned[C - 1 - c].as_signed())
        m.d.comb += self.sums.valid.eq(delayed(m, valid0, R + C + 1, "valid", reset=True))
        return m
