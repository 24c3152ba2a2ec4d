"""Weight-stationary systolic array of multiply-accumulate cells with two weight banks."""

from amaranth import Module, Mux, Signal, signed
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
    """

    def __init__(self, rows: int, cols: int, psum_bits: int):
        if rows < 1 or cols < 1:
            raise ValueError(f"array must have at least one row and column, not {rows}x{cols}")
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

        def grid(shape, name):
            return [[Signal(shape, name=f"{name}_{r}_{c}") for c in range(C)] for r in range(R)]

        act = grid(signed(9), "act")
        bank = grid(1, "bank")
        product = grid(signed(16), "prod")
        psum = grid(signed(self.psum_bits), "psum")
        weights = (grid(signed(8), "w0"), grid(signed(8), "w1"))

        for r in range(R):
            for c in range(C):
                act_left = self.act[r] if c == 0 else act[r][c - 1]
                bank_left = self.act_bank[r] if c == 0 else bank[r][c - 1]
                if c < C - 1:
                    m.d.sync += [act[r][c].eq(act_left), bank[r][c].eq(bank_left)]
                weight = Mux(bank_left, weights[1][r][c], weights[0][r][c])
                m.d.sync += product[r][c].eq(act_left * weight)
                above = psum[r - 1][c] if r > 0 else 0
                m.d.sync += psum[r][c].eq(above + product[r][c])

        for c in range(C):
            for b, bank_weights in enumerate(weights):
                with m.If(self.wl_en[c] & (self.wl_bank[c] == b)):
                    for r in range(R):
                        source = self.wl_data[c] if r == 0 else bank_weights[r - 1][c]
                        m.d.sync += bank_weights[r][c].eq(source)
            m.d.comb += self.psum[c].eq(psum[R - 1][c])
        return m
