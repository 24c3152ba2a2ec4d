"""Per-channel requantization: bias, fixed-point multiplier and shift, zero point, clamp."""

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.data import ArrayLayout
from amaranth.lib.wiring import In, Out

__all__ = ["PostProcessor"]


class PostProcessor(wiring.Component):
    """``lanes`` parallel requantizers, one row per cycle, fixed latency :attr:`latency`.

    For each lane (all arithmetic exact, two's complement)::

        x = wrap_int32(acc + bias)
        p = x * multiplier                      # multiplier in 0 .. 2**31 - 1
        y = (p + (1 << shift >> 1)) >> shift    # round half up, shift in 0 .. 63
        q = clamp(y + out_zero_point, clamp_min, clamp_max)
        out = q mod 256

    ``out_raw`` carries the unmodified accumulators of valid rows with the same latency.
    The parameters are not pipelined: hold them while rows are in flight.
    """

    latency = 4

    def __init__(self, lanes: int):
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, not {lanes}")
        self.lanes = lanes
        super().__init__({
            "in_valid": In(1),
            "in_acc": In(ArrayLayout(signed(32), lanes)),
            "bias": In(ArrayLayout(signed(32), lanes)),
            "multiplier": In(ArrayLayout(signed(32), lanes)),
            "shift": In(ArrayLayout(unsigned(6), lanes)),
            "out_zero_point": In(signed(16)),
            "clamp_min": In(signed(16)),
            "clamp_max": In(signed(16)),
            "out_valid": Out(1),
            "out_data": Out(ArrayLayout(unsigned(8), lanes)),
            "out_raw": Out(ArrayLayout(signed(32), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        # One valid bit per stage; a stage's data registers only load when data arrives,
        # so an idle post-processor costs a simulator almost nothing.
        valid = [self.in_valid] + [Signal(name=f"valid_{stage + 1}") for stage in range(self.latency)]
        for stage in range(self.latency):
            m.d.sync += valid[stage + 1].eq(valid[stage])
        for lane in range(self.lanes):
            raw = [self.in_acc[lane]] + [Signal(signed(32), name=f"raw_{lane}_{stage + 1}", reset_less=True)
                                         for stage in range(self.latency)]
            biased = Signal(signed(32), name=f"biased_{lane}", reset_less=True)
            product = Signal(signed(64), name=f"product_{lane}", reset_less=True)
            scaled = Signal(signed(64), name=f"scaled_{lane}", reset_less=True)
            clamped = Signal(signed(16), name=f"clamped_{lane}", reset_less=True)
            shift = self.shift[lane]
            # 1 << shift >> 1, written as a right shift so no 127-bit intermediate appears.
            rounding = Signal(unsigned(63), name=f"rounding_{lane}")
            m.d.comb += rounding.eq(Const(1 << 63, 64) >> (Const(64, 7) - shift)[:7])
            shifted = Signal(signed(65), name=f"shifted_{lane}")
            m.d.comb += shifted.eq(scaled + self.out_zero_point)
            stages = (
                biased.eq(self.in_acc[lane] + self.bias[lane]),
                product.eq(biased * self.multiplier[lane]),
                scaled.eq((product + rounding) >> shift),
                clamped.eq(Mux(shifted < self.clamp_min, self.clamp_min,
                               Mux(shifted > self.clamp_max, self.clamp_max, shifted))),
            )
            for stage, assignment in enumerate(stages):
                with m.If(valid[stage]):
                    m.d.sync += [assignment, raw[stage + 1].eq(raw[stage])]
            m.d.comb += [self.out_data[lane].eq(clamped[:8]), self.out_raw[lane].eq(raw[-1])]
        m.d.comb += self.out_valid.eq(valid[-1])
        return m
