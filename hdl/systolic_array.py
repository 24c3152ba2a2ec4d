"""Weight-stationary systolic array of multiply-accumulate cells with an active and two shadow weights."""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.data import ArrayLayout
from amaranth.lib.wiring import In, Out

from mvu.hdl.pipeline import idle_gated_domain

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """``rows`` x ``cols`` cells; activations move right, partial sums move down.

    Each cell holds an *active* weight and two *shadow* weights (banks 0
    and 1). Cell ``(r, c)`` multiplies the activation it holds by its active
    weight, registers the 17-bit product (so the multiplier is pipelined),
    and adds it to the partial sum from the cell above. New weights enter
    the shadow registers of bank ``wl_bank`` from the top, one row per
    enabled shift, without disturbing the active ones or the other bank. An
    activation flagged ``act_first`` carries a swap from bank ``act_bank``:
    each cell copies that shadow to active just before the activation
    reaches it, so the swap sweeps the array diagonally together with the
    data and the previous tile's activations still in flight keep their
    weights. One bank can fill while the other waits for its swap.

    The caller skews the inputs: row ``r``'s activation (and its flags)
    enters ``r`` cycles after row 0's, and column ``c`` of the weight-shift
    chain runs ``c`` cycles after column 0. An activation entering row ``r``
    in cycle ``t`` is multiplied in column ``c`` in cycle ``t + 1 + c``.

    The form is chosen for Verilator; the netlist is the same cells either
    way. Each cell's activation is its own register, so the model copies a
    row's chain in place, last cell first (as one wide shift register, each
    row went through a temporary copy every cycle). The shadow weights of a
    column are one wide shift register, which moves under its enable in a
    few word operations; in the simulator's Verilog on a clock that runs
    only while a tile loads (:func:`~mvu.hdl.pipeline.idle_gated_domain`).
    """

    def __init__(self, rows: int, cols: int, psum_bits: int):
        if rows < 2 or cols < 2:
            raise ValueError(f"the array must be at least 2x2, not {rows}x{cols}")
        if psum_bits < 17 + (rows - 1).bit_length():
            raise ValueError(f"psum_bits={psum_bits} cannot hold a sum of {rows} 17-bit products")
        self.rows, self.cols, self.psum_bits = rows, cols, psum_bits
        super().__init__({
            "act": In(ArrayLayout(signed(9), rows)),
            "act_first": In(ArrayLayout(1, rows)),
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
        acts = [[Signal(signed(9), name=f"act_{r}_{c}", reset_less=True) for c in range(C)] for r in range(R)]
        first_rows = [Signal(C - 1, name=f"first_row_{r}", reset_less=True) for r in range(R)]
        bank_rows = [Signal(C - 1, name=f"bank_row_{r}", reset_less=True) for r in range(R)]
        shadow_cols = [[Signal(8 * R, name=f"shadow{bank}_col_{c}", reset_less=True) for c in range(C)]
                       for bank in range(2)]
        active = [[Signal(signed(8), name=f"w_{r}_{c}", reset_less=True) for c in range(C)] for r in range(R)]
        product = [[Signal(signed(17), name=f"prod_{r}_{c}", reset_less=True) for c in range(C)] for r in range(R)]
        psum = [[Signal(signed(self.psum_bits), name=f"psum_{r}_{c}", reset_less=True) for c in range(C)]
                for r in range(R)]

        for r in range(R):
            m.d.sync += [
                acts[r][0].eq(self.act[r]),
                *(acts[r][c].eq(acts[r][c - 1]) for c in range(1, C)),
                first_rows[r].eq(Cat(self.act_first[r], first_rows[r][:C - 2])),
                bank_rows[r].eq(Cat(self.act_bank[r], bank_rows[r][:C - 2])),
            ]
        # Shadow weights shift only while a tile loads: the simulator's Verilog skips them otherwise. ``wl_en`` comes
        # from registers (the preloader's shift flag and its skew stages), as the gate's enable must.
        loading = m.d[idle_gated_domain(m, platform, lambda: Cat(*self.wl_en).any(), "shadow_clock")]
        for c in range(C):
            for bank, shadow in enumerate(shadow_cols):
                with m.If(self.wl_en[c] & (self.wl_bank[c] == bank)):
                    loading += shadow[c].eq(Cat(self.wl_data[c], shadow[c][:8 * (R - 1)]))

        for r in range(R):
            for c in range(C):
                # The flags of the activation that reaches this cell next cycle.
                swap = self.act_first[r] if c == 0 else first_rows[r][c - 1]
                bank = self.act_bank[r] if c == 0 else bank_rows[r][c - 1]
                with m.If(swap):
                    m.d.sync += active[r][c].eq(Mux(bank, shadow_cols[1][c][8 * r:8 * r + 8],
                                                    shadow_cols[0][c][8 * r:8 * r + 8]))
                m.d.sync += product[r][c].eq(acts[r][c] * active[r][c])
                above = psum[r - 1][c] if r > 0 else 0
                m.d.sync += psum[r][c].eq(above + product[r][c])
        for c in range(C):
            m.d.comb += self.psum[c].eq(psum[R - 1][c])
        return m
