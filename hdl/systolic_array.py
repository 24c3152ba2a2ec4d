"""Weight-stationary systolic array of multiply-accumulate cells with two weight banks."""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.data import ArrayLayout
from amaranth.lib.wiring import In, Out

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """``rows`` x ``cols`` cells; activations move right, partial sums move down.

    Cell ``(r, c)`` multiplies the activation arriving from its left by the
    weight of the bank that activation names, registers the 16-bit product
    (so the multiplier is pipelined), and adds it to the partial sum from the
    cell above. The caller skews the inputs: row ``r``'s activation enters
    ``r`` cycles after row 0's, and column ``c`` of the weight-shift chain
    runs ``c`` cycles after column 0. Weights enter at the top: each enabled
    shift moves a bank's column down by one row.

    The registers that move activations along a row, and a bank's weights
    along a column, are kept as one wide shift register each. The netlist is
    the same cells, but a cycle-based simulator moves each row or column in
    a few word operations instead of one per cell.
    """

    def __init__(self, rows: int, cols: int, psum_bits: int):
        if rows < 2 or cols < 2:
            raise ValueError(f"the array must be at least 2x2, not {rows}x{cols}")
        if psum_bits < 16 + (rows - 1).bit_length():
            raise ValueError(f"psum_bits={psum_bits} cannot hold a sum of {rows} 16-bit products")
        self.rows, self.cols, self.psum_bits = rows, cols, psum_bits
        super().__init__({
            "act": In(ArrayLayout(signed(9), rows)),
            "act_bank": In(ArrayLayout(1, rows)),
            "wl_data": In(ArrayLayout(signed(8), cols)),
            "wl_en": In(ArrayLayout(1, cols)),
            "wl_bank": In(ArrayLayout(1, cols)),
            "psum": Out(ArrayLayout(signed(psum_bits), cols)),
        })

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols
        # Datapath registers need no reset: the valid bits outside the array have one.
        act_rows = [Signal(9 * (C - 1), name=f"act_row_{r}", reset_less=True) for r in range(R)]
        bank_rows = [Signal(C - 1, name=f"bank_row_{r}", reset_less=True) for r in range(R)]
        weight_cols = [[Signal(8 * R, name=f"w{b}_col_{c}", reset_less=True) for c in range(C)] for b in range(2)]
        product = [[Signal(signed(17), name=f"prod_{r}_{c}", reset_less=True) for c in range(C)] for r in range(R)]
        psum = [[Signal(signed(self.psum_bits), name=f"psum_{r}_{c}", reset_less=True) for c in range(C)]
                for r in range(R)]

        for r in range(R):
            m.d.sync += [
                act_rows[r].eq(Cat(self.act[r], act_rows[r][:9 * (C - 2)])),
                bank_rows[r].eq(Cat(self.act_bank[r], bank_rows[r][:C - 2])),
            ]
        for c in range(C):
            for b in range(2):
                with m.If(self.wl_en[c] & (self.wl_bank[c] == b)):
                    m.d.sync += weight_cols[b][c].eq(Cat(self.wl_data[c], weight_cols[b][c][:8 * (R - 1)]))

        for r in range(R):
            for c in range(C):
                act_left = self.act[r] if c == 0 else act_rows[r][9 * (c - 1):9 * c].as_signed()
                bank_left = self.act_bank[r] if c == 0 else bank_rows[r][c - 1]
                weight = Mux(bank_left, weight_cols[1][c][8 * r:8 * r + 8], weight_cols[0][c][8 * r:8 * r + 8])
                m.d.sync += product[r][c].eq(act_left * weight.as_signed())
                above = psum[r - 1][c] if r > 0 else 0
                m.d.sync += psum[r][c].eq(above + product[r][c])
        for c in range(C):
            m.d.comb += self.psum[c].eq(psum[R - 1][c])
        return m
