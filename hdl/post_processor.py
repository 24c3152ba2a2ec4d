"""Per-channel requantization: bias, then a fixed-point multiplier and shift or a float32 scale; zero point, clamp."""

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.data import ArrayLayout
from amaranth.lib.wiring import In, Out

from mvu.hdl.pipeline import idle_gated_domain

__all__ = ["PostProcessor"]

_SIGNIFICAND = 24  # bits of a float32 significand, hidden bit included
_SATURATE_BITS = 20
_SATURATE = 1 << _SATURATE_BITS  # scaled values beyond this clamp like it: zero point and clamp bounds are int16


def _bit_length(m: Module, value: Value, name: str) -> Signal:
    """Combinational: the number of bits ``value`` (unsigned) needs, 0 for zero; a binary search, which
    simulates faster than a priority chain."""
    steps = [1 << i for i in reversed(range(max(1, (len(value) - 1).bit_length())))]
    length = Signal(range(len(value) + 1), name=name)
    rest, found = value, []
    for step in steps:
        upper = Signal(len(value), name=f"{name}_{step}")
        m.d.comb += upper.eq(rest >> step)
        found.append(Mux(upper != 0, step, 0))
        rest = Mux(upper != 0, upper, rest)
    m.d.comb += length.eq(sum(found) + (rest != 0))
    return length


def _round_right(value: Value, amount: Value) -> Value:
    """``value`` (unsigned) divided by ``2**amount``, rounded half to even; ``amount`` at most
    ``len(value)``. ``(value + 2**(amount-1) - 1 + odd quotient) >> amount``, with the constant made by
    shifting right, so no intermediate grows wider than ``value`` plus one bit (wide values slow
    Verilator down)."""
    width = len(value)
    below_half = Const((1 << width) - 1, width) >> (width + 1 - amount)[:(width + 1).bit_length()]  # 0 if amount is 0
    odd = (value >> amount)[0] & (amount != 0)
    return (value + below_half + odd) >> amount


def _saturated(value: Value) -> Value:
    return Mux(value > _SATURATE, _SATURATE, Mux(value < -_SATURATE, -_SATURATE, value))


def _partial_products(a: Value, b: Value) -> list[Value]:
    """The 16 x 16-bit partial products of ``a`` and ``b`` (signed 32): low x low, high x low, low x high and
    high x high (the high halves signed), whose sum ``hh << 32 + (hl + lh) << 16 + ll`` is ``a * b``."""
    a_low, a_high, b_low, b_high = a[:16], a[16:].as_signed(), b[:16], b[16:].as_signed()
    return [a_low * b_low, a_high * b_low, a_low * b_high, a_high * b_high]


class PostProcessor(wiring.Component):
    """``lanes`` parallel requantizers, one row per cycle, fixed latency :attr:`latency`.

    For each lane (all arithmetic exact, two's complement)::

        x = wrap_int32(acc + bias)
        fixed point:   y = (x * multiplier + (1 << shift >> 1)) >> shift     # round half up
        float32_scale: y = rint(float32(float32(x) * float32(multiplier mod 2**24 * 2**-shift)))
        q = clamp(y + out_zero_point, clamp_min, clamp_max)
        out = q mod 256

    with ``multiplier`` in 0 .. 2**31 - 1 and ``shift`` in 0 .. 63. The float32
    path is onnxruntime's requantization done in integers: ``float32(x)``
    keeps 24 significant bits of ``x``, the product keeps 24 of the exact
    product, and ``rint`` rounds that to an integer, each half to even.

    ``out_raw`` carries the unmodified accumulators of valid rows with the same latency.
    The parameters are not pipelined: hold them while rows are in flight. Built with
    ``float32=False`` it has only the fixed-point path (``float32_scale`` is ignored), which
    saves each lane's float32 rounding logic; the multiplier stays.
    """

    latency = 8

    def __init__(self, lanes: int, *, float32: bool = True):
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, not {lanes}")
        self.lanes, self.float32 = lanes, float32
        super().__init__({
            "in_valid": In(1),
            "in_acc": In(ArrayLayout(signed(32), lanes)),
            "bias": In(ArrayLayout(signed(32), lanes)),
            "multiplier": In(ArrayLayout(signed(32), lanes)),
            "shift": In(ArrayLayout(unsigned(6), lanes)),
            "float32_scale": In(1),
            "out_zero_point": In(signed(16)),
            "clamp_min": In(signed(16)),
            "clamp_max": In(signed(16)),
            "out_valid": Out(1),
            "out_data": Out(ArrayLayout(unsigned(8), lanes)),
            "out_raw": Out(ArrayLayout(signed(32), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        # One valid bit per stage; a stage's data registers only load when data arrives, and the Verilator
        # model clocks the whole pipeline only while a row is in it (an idle one costs it nothing).
        valid = [self.in_valid] + [Signal(name=f"valid_{stage + 1}") for stage in range(self.latency)]
        sync = m.d[idle_gated_domain(m, platform, lambda: Cat(*valid).any(), "ppu_clock")]
        for stage in range(self.latency):
            sync += valid[stage + 1].eq(valid[stage])
        for lane in range(self.lanes):
            stages = [[] for _ in range(self.latency)]  # the assignments each stage registers
            raw = [self.in_acc[lane]] + [Signal(signed(32), name=f"raw_{lane}_{stage + 1}", reset_less=True)
                                         for stage in range(self.latency)]
            for stage in range(self.latency):
                stages[stage].append(raw[stage + 1].eq(raw[stage]))
            reg = lambda shape, name: Signal(shape, name=f"{name}_{lane}", reset_less=True)
            biased = reg(signed(32), "biased")
            stages[0].append(biased.eq(self.in_acc[lane] + self.bias[lane]))
            shift, float32 = self.shift[lane], self.float32_scale
            factor, product = reg(signed(32), "factor"), reg(signed(64), "product")

            # Stage 2. float32: x as a 24-bit significand F * 2**k (sign aside); fixed point: x itself.
            if self.float32:
                significand, floated = self._float32_path(m, stages, lane, biased, product)
                stages[1].append(factor.eq(Mux(float32, significand, biased)))
                multiplier = Mux(float32, self.multiplier[lane][:_SIGNIFICAND], self.multiplier[lane])
            else:
                stages[1].append(factor.eq(biased))
                multiplier = self.multiplier[lane]

            # Stage 3: one multiplier for both: x * multiplier, or F * S (S: the scale's 24-bit significand), as
            # four 16 x 16-bit partial products, each one DSP, registered. Beside them, the rounding term
            # 1 << shift >> 1 (from the held shift), written as a right shift so no 127-bit intermediate appears.
            # Stage 4 sums the partial products: an ECP5 held the whole product in one stage under 52 MHz, most of
            # it routing from the DSPs to the carry chains that add their outputs.
            partials = _partial_products(factor, multiplier)
            partial_regs = [reg(value.shape(), f"partial_{index}") for index, value in enumerate(partials)]
            rounding = reg(unsigned(63), "rounding_3")
            stages[2] += [register.eq(value) for register, value in zip(partial_regs, partials)]
            stages[2].append(rounding.eq(Const(1 << 63, 64) >> (Const(64, 7) - shift)[:7]))
            low_low, high_low, low_high, high_high = partial_regs
            rounding_4 = reg(unsigned(63), "rounding_4")
            stages[3] += [product.eq((high_high << 32) + ((high_low + low_high) << 16) + low_low),
                          rounding_4.eq(rounding)]

            # Stage 5. Fixed point: the rounding term added (|product| < 2**62 and rounding <= 2**62: the sum fits
            # 64 bits; 65 would slow Verilator down). Stage 6: shifted. The add and the shift by the held shift
            # in one stage held an ECP5 at 47.8 MHz.
            rounded = reg(signed(64), "rounded")
            stages[4].append(rounded.eq(product + rounding_4))
            scaled = reg(signed(64), "scaled")
            stages[5].append(scaled.eq(rounded >> shift))

            # Stage 7. Fixed point: saturated.
            fixed = reg(signed(22), "fixed")
            stages[6].append(fixed.eq(_saturated(scaled)))
            result = Mux(float32, floated, fixed) if self.float32 else fixed

            clamped = reg(signed(16), "clamped")
            shifted = Signal(signed(23), name=f"shifted_{lane}")
            m.d.comb += shifted.eq(result + self.out_zero_point)
            stages[7].append(clamped.eq(Mux(shifted < self.clamp_min, self.clamp_min,
                                            Mux(shifted > self.clamp_max, self.clamp_max, shifted))))
            for stage, assignments in enumerate(stages):
                with m.If(valid[stage]):
                    sync += assignments
            m.d.comb += [self.out_data[lane].eq(clamped[:8]), self.out_raw[lane].eq(raw[-1])]
        m.d.comb += self.out_valid.eq(valid[-1])
        return m

    def _float32_path(self, m: Module, stages: list[list], lane: int, biased: Signal,
                      product: Signal) -> tuple[Value, Signal]:
        """The float32 path's own logic in ``stages``: returns the significand F of ``biased`` (stage 2's
        input) and the register holding ``rint(F * S * 2**(k - shift))``, saturated (stage 7's output),
        where ``product`` (stage 4) is F * S."""
        reg = lambda shape, name: Signal(shape, name=f"{name}_{lane}", reset_less=True)
        magnitude = Signal(unsigned(32), name=f"magnitude_{lane}")
        m.d.comb += magnitude.eq(Mux(biased < 0, -biased, biased))
        k = _bit_length(m, magnitude[_SIGNIFICAND:], f"k_{lane}")
        negative = [reg(1, f"negative_{stage}") for stage in (2, 3, 4, 5)]
        exponent = reg(range(9), "exponent")
        stages[1] += [negative[0].eq(biased < 0), exponent.eq(k)]

        power = [reg(signed(8), f"power_{stage}") for stage in (3, 4)]  # k - shift
        stages[2] += [negative[1].eq(negative[0]), power[0].eq(exponent - self.shift[lane])]
        stages[3] += [negative[2].eq(negative[1]), power[1].eq(power[0])]

        # Stage 5: the product to 24 significant bits T * 2**j.
        exact = product[:2 * _SIGNIFICAND + 1]  # F * S < 2**49
        j = _bit_length(m, exact[_SIGNIFICAND:], f"j_{lane}")
        kept, kept_power = reg(unsigned(_SIGNIFICAND + 1), "kept"), reg(signed(8), "power_5")
        stages[4] += [negative[3].eq(negative[2]), kept.eq(_round_right(exact, j)), kept_power.eq(power[1] + j)]

        # Stage 6: T * 2**(j + k - shift), rounded to an integer.
        # kept * 2**kept_power, rounded; kept is at most 2**24, so shifting right by more than 25 gives 0 like 25.
        right = Signal(range(_SIGNIFICAND + 2), name=f"right_{lane}")
        m.d.comb += right.eq(Mux(kept_power < -(_SIGNIFICAND + 1), _SIGNIFICAND + 1, -kept_power))
        whole = _round_right(kept, right)
        magnitude_out = Mux(kept_power >= 0,
                            Mux(kept == 0, 0, Mux(kept_power > _SATURATE_BITS, _SATURATE,
                                                  kept << kept_power[:5])), whole)
        floated = reg(signed(22), "floated")
        limited = Signal(unsigned(_SIGNIFICAND + 1 + _SATURATE_BITS), name=f"limited_{lane}")
        m.d.comb += limited.eq(magnitude_out)
        stages[5].append(floated.eq(_saturated(Mux(negative[3], -limited.as_signed(), limited.as_signed()))))
        floated_7 = reg(signed(22), "floated_7")  # beside the fixed point's stage 7
        stages[6].append(floated_7.eq(floated))
        return _round_right(magnitude, k), floated_7
