"""The requantizing residual add: each lane's code plus an addend byte, onnxruntime's QLinearAdd in integers."""

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.data import ArrayLayout
from amaranth.lib.wiring import In, Out

from mvu.hdl.pipeline import idle_gated_domain
from mvu.hdl.post_processor import _bit_length, _round_right

__all__ = ["ResidualAdd"]

_SIGNIFICAND = 24  # bits of a float32 significand, hidden bit included
_MAGNITUDE = 62  # every intermediate's magnitude stays below 2**62 (the add block's bounds)
_RATIO, _START = 53, 61  # signed bits of the ratios and the start


def _round_significant(m: Module, value: Value, name: str) -> Value:
    """``value`` (signed 63) rounded to 24 significant bits, half to even: float32 rounding on the integer grid.
    The dropped bits are rounded away in place (no shift right and back), so nothing grows past 64 bits."""
    magnitude = Signal(unsigned(_MAGNITUDE), name=f"{name}_magnitude")
    m.d.comb += magnitude.eq(Mux(value < 0, -value, value))
    drop = _bit_length(m, magnitude[_SIGNIFICAND:], f"{name}_drop")
    dropped = Signal(unsigned(_MAGNITUDE), name=f"{name}_dropped")  # ones in the low ``drop`` bits
    m.d.comb += dropped.eq(Const((1 << _MAGNITUDE) - 1, _MAGNITUDE) >> (Const(_MAGNITUDE, 7) - drop)[:7])
    odd = (magnitude >> drop)[0] & (drop != 0)
    rounded = Signal(unsigned(_MAGNITUDE + 1), name=f"{name}_rounded")
    m.d.comb += rounded.eq((magnitude + (dropped >> 1) + odd) & ~dropped)
    return Mux(value < 0, -rounded.as_signed(), rounded.as_signed())


class ResidualAdd(wiring.Component):
    """``lanes`` parallel residual adds, one row per cycle, fixed latency :attr:`latency`.

    For each lane (:func:`mvu.hdl.contract.residual_add.residual_add`, all exact)::

        x_in, x_out, r_in, r_out = (q, b, ratio_q, ratio_b) if q_inner else (b, q, ratio_b, ratio_q)
        inner = round24(r_in * x_in + start)
        outer = round24(r_out * x_out + inner)
        out = clamp(round(outer / 2**shift), low, high)

    where ``round24`` keeps 24 significant bits and every rounding is half to even: two float32 fused
    multiply-adds and ``rint`` on the grid ``2**-shift`` of the coefficients.

    Ports:
        in_valid: ``In(1)``: ``in_data`` and ``addend`` hold a row.
        in_data: ``In(ArrayLayout(unsigned(8), lanes))``: the codes ``q``.
        addend: ``In(ArrayLayout(unsigned(8), lanes))``: the addend ``b``.
        enable: ``In(1)``: add (else pass ``in_data`` through); sampled with ``in_valid``.
        ratio_q, ratio_b: ``In(signed(64))``: the ratios times ``2**shift`` (below ``2**52`` in magnitude).
        start: ``In(signed(64))``: the start times ``2**shift`` (below ``2**60`` in magnitude).
        shift: ``In(unsigned(6))``; q_inner: ``In(1)``; low, high: ``In(unsigned(8))``: the clamp.
        out_valid: ``Out(1)``: ``out_data`` holds the row that came in :attr:`latency` cycles earlier.
        out_data: ``Out(ArrayLayout(unsigned(8), lanes))``.

    The coefficients are not pipelined: hold them while rows are in flight.

    Cost: each lane's two 53 x 9-bit products take 6 MULT18X18D, and its three 63-bit roundings most of the
    logic. Yosys (synth_ecp5 -abc9) of the ULX3S preset's core (8 lanes): 104 -> 152 MULT18X18D (of the
    LFE5U-85F's 156), 13.7 k -> 21.3 k LUT4, 3.3 k -> 6.9 k CCU2C, 15.4 k -> 19.6 k FF, 42 -> 44 DP16KD
    (before: the store unit without it).
    """

    latency = 5

    def __init__(self, lanes: int):
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, not {lanes}")
        self.lanes = lanes
        row = ArrayLayout(unsigned(8), lanes)
        super().__init__({
            "in_valid": In(1), "in_data": In(row), "addend": In(row), "enable": In(1),
            "ratio_q": In(signed(64)), "ratio_b": In(signed(64)), "start": In(signed(64)),
            "shift": In(unsigned(6)), "q_inner": In(1), "low": In(unsigned(8)), "high": In(unsigned(8)),
            "out_valid": Out(1), "out_data": Out(row),
        })

    def elaborate(self, platform):
        m = Module()
        # One valid bit per stage; data registers load only with valid data, and the Verilator model clocks the
        # whole pipeline only while a row is in it (an idle block costs it nothing).
        valid = [self.in_valid] + [Signal(name=f"valid_{stage + 1}") for stage in range(self.latency)]
        sync = m.d[idle_gated_domain(m, platform, lambda: Cat(*valid).any(), "residual_clock")]
        for stage in range(self.latency):
            sync += valid[stage + 1].eq(valid[stage])
        enabled = [Signal(name=f"enabled_{stage + 1}", reset_less=True) for stage in range(self.latency)]
        stages = [[enabled[0].eq(self.enable)]] + [[enabled[s].eq(enabled[s - 1])] for s in range(1, self.latency)]
        ratio_q, ratio_b = self.ratio_q[:_RATIO].as_signed(), self.ratio_b[:_RATIO].as_signed()
        r_in, r_out = Mux(self.q_inner, ratio_q, ratio_b), Mux(self.q_inner, ratio_b, ratio_q)
        for lane in range(self.lanes):
            reg = lambda shape, name: Signal(shape, name=f"{name}_{lane}", reset_less=True)
            q, b = self.in_data[lane], self.addend[lane]
            codes = [reg(8, f"code_{s + 1}") for s in range(self.latency - 1)]
            x_out = [reg(8, f"x_out_{s + 1}") for s in range(2)]
            stages[0] += [codes[0].eq(q), x_out[0].eq(Mux(self.q_inner, b, q))]
            for s in range(1, self.latency - 1):
                stages[s].append(codes[s].eq(codes[s - 1]))
            stages[1].append(x_out[1].eq(x_out[0]))

            # Stage 1: the inner product and the start; stage 2: to float32.
            inner, inner_float = reg(signed(_MAGNITUDE + 1), "inner"), reg(signed(_MAGNITUDE + 1), "inner_float")
            stages[0].append(inner.eq(r_in * Mux(self.q_inner, q, b) + self.start[:_START].as_signed()))
            stages[1].append(inner_float.eq(_round_significant(m, inner, f"inner_{lane}")))
            # Stage 3: the outer product onto it; stage 4: to float32.
            outer, outer_float = reg(signed(_MAGNITUDE + 1), "outer"), reg(signed(_MAGNITUDE + 1), "outer_float")
            stages[2].append(outer.eq(r_out * x_out[1] + inner_float))
            stages[3].append(outer_float.eq(_round_significant(m, outer, f"outer_{lane}")))
            # Stage 5: rint on the grid, clamped (a negative sum clamps to low, which is at least 0).
            magnitude = Signal(unsigned(_MAGNITUDE + 1), name=f"sum_magnitude_{lane}")  # shift can be 63
            m.d.comb += magnitude.eq(Mux(outer_float < 0, -outer_float, outer_float))
            whole = Signal(unsigned(_MAGNITUDE + 1), name=f"whole_{lane}")
            m.d.comb += whole.eq(_round_right(magnitude, self.shift))
            below = (outer_float < 0) & (whole != 0) | (whole < self.low)
            result = reg(8, "result")
            stages[4].append(result.eq(Mux(~enabled[3], codes[3],
                                           Mux(below, self.low, Mux(whole > self.high, self.high, whole)))))
            m.d.comb += self.out_data[lane].eq(result)
        for stage, assignments in enumerate(stages):
            with m.If(valid[stage]):
                sync += assignments
        m.d.comb += self.out_valid.eq(valid[-1])
        return m
