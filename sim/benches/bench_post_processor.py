"""cocotb bench of :class:`mvu.hdl.post_processor.PostProcessor` against :func:`mvu.hdl.contract.requantization.requantize`.

Bursts of random int32 accumulators run through random per-lane parameters,
which change only between bursts, once the previous burst has drained.
"""

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.contract.requantization import float32_scales, requantize
from mvu.hdl.post_processor import PostProcessor
from mvu.sim.benches.runner import pack, start, unpack

LANES = 4
LATENCY = PostProcessor.latency
INT32 = (-(1 << 31), 1 << 31)
STYLES = ("wide", "scaled", "tiny", "float wide", "float scaled", "float ties")


def component() -> PostProcessor:
    return PostProcessor(LANES)


def random_burst(rng: np.random.Generator, styles: tuple[str, ...] = STYLES):
    """Accumulator rows and parameters of one burst, drawn from one of ``styles``.

    Fixed point: ``wide``: any int32 accumulator and bias (sums wrap), any
    multiplier and shift. ``scaled``: random magnitudes with shifts that bring the
    result near the byte range. ``tiny``: small values, where rounding ties
    are common. float32 scales: ``float wide``: any sum, significand and
    shift. ``float scaled``: scales like a quantized network's, results
    near the byte range. ``float ties``: sums whose scaled value lies within
    a float32 rounding of an integer and a half, so that both roundings and
    their order decide the result.
    """
    rows = int(rng.integers(1, 17))
    style = rng.choice(styles)
    float32_scale = style.startswith("float")
    bias = rng.integers(*INT32, LANES) >> rng.integers(0, 32, LANES)
    if style == "tiny":
        acc = rng.integers(-64, 65, (rows, LANES))
        bias = rng.integers(-64, 65, LANES)
        multiplier = rng.integers(0, 9, LANES)
        shift = rng.integers(0, 6, LANES)
    elif style == "wide":
        acc = rng.integers(*INT32, (rows, LANES))
        bias = rng.integers(*INT32, LANES)
        multiplier = rng.integers(0, 1 << 31, LANES)
        shift = rng.integers(0, 64, LANES)
    elif style == "scaled":
        acc = rng.integers(*INT32, (rows, LANES)) >> rng.integers(0, 32)
        multiplier = rng.integers(0, 1 << 31, LANES) >> rng.integers(0, 31, LANES)
        bits = [int(np.abs(acc[:, lane]).max()).bit_length() + int(multiplier[lane]).bit_length()
                for lane in range(LANES)]
        shift = np.clip(np.array(bits) - rng.integers(0, 12, LANES), 0, 63)
    elif style == "float wide":
        acc = rng.integers(*INT32, (rows, LANES))
        multiplier = rng.integers(0, 1 << 24, LANES) >> rng.integers(0, 25, LANES)
        shift = rng.integers(0, 64, LANES)
    elif style == "float scaled":
        acc = rng.integers(*INT32, (rows, LANES)) >> rng.integers(0, 32)
        multiplier = rng.integers(1 << 23, 1 << 24, LANES)
        bits = [int(np.abs(acc[:, lane]).max() + 1).bit_length() + 24 for lane in range(LANES)]
        shift = np.clip(np.array(bits) - rng.integers(0, 12, LANES), 0, 63)
    else:
        bias = np.zeros(LANES, np.int64)
        multiplier = rng.integers(1 << 23, 1 << 24, LANES)
        shift = rng.integers(30, 38, LANES)
        scale = float32_scales(multiplier, shift).astype(np.float64)
        halves = rng.integers(-(1 << 14), 1 << 14, (rows, LANES)) + 0.5
        acc = np.clip(np.round(halves / scale) + rng.integers(-2, 3, (rows, LANES)), *INT32).astype(np.int64)
    low, high = sorted(int(v) for v in rng.integers(-(1 << 15), 1 << 15, 2))
    if style == "float ties":
        low, high = -(1 << 15), (1 << 15) - 1
    elif rng.random() < 0.5:
        low, high = [(-128, 127), (0, 255), (-128, 255), (0, 6)][rng.integers(4)]
    zero_point = rng.integers(-128, 256) if style in ("scaled", "tiny", "float scaled") else \
        rng.integers(-(1 << 15), 1 << 15)
    params = {"bias": bias, "multiplier": multiplier, "shift": shift, "float32_scale": int(float32_scale),
              "out_zero_point": int(zero_point), "clamp_min": low, "clamp_max": high}
    return acc, params


async def check_bursts(dut, rng: np.random.Generator, bursts: int, shift: int | None = None,
                       styles: tuple[str, ...] = STYLES, ignored_float32: bool = False) -> int:
    """Stream ``bursts`` random bursts; check ``out_valid`` every cycle, ``out_data`` and ``out_raw`` per row.

    ``shift``, if given, replaces every lane's random shift. ``ignored_float32``: the block has no
    float32 path, so ``float32_scale`` is driven at random and the fixed-point result expected. Parameters change
    in the cycle the previous burst's last row comes out, the earliest the
    contract allows; ``in_acc`` carries random values between rows.
    Returns the number of rows checked.
    """
    drive, expect = [], []
    garbage = lambda: pack(rng.integers(*INT32, LANES), 32)
    for _ in range(bursts):
        acc, params = random_burst(rng, styles)
        if ignored_float32:
            params["float32_scale"] = int(rng.integers(0, 2))
        if shift is not None:
            params["shift"] = np.full(LANES, shift)
        want = requantize(acc, params["bias"], params["multiplier"], params["shift"], params["out_zero_point"],
                          params["clamp_min"], params["clamp_max"],
                          float32_scale=bool(params["float32_scale"]) and not ignored_float32)
        ports = {"bias": pack(params["bias"], 32), "multiplier": pack(params["multiplier"], 32),
                 "shift": pack(params["shift"], 6),
                 **{name: params[name] for name in ("float32_scale", "out_zero_point", "clamp_min", "clamp_max")}}
        rows = [(acc[i], [int(v) for v in want[i]]) for i in range(len(acc))]
        while rows:
            if rng.random() < 0.8:
                row, out = rows.pop(0)
                drive.append(ports | {"in_valid": 1, "in_acc": pack(row, 32)})
                expect.append(out)
            else:
                drive.append(ports | {"in_valid": 0, "in_acc": garbage()})
                expect.append(None)
        for _ in range(LATENCY - 1 + int(rng.integers(0, 3))):
            drive.append(ports | {"in_valid": 0, "in_acc": garbage()})
            expect.append(None)
    expect += [None] * LATENCY
    drive += [drive[-1]] * LATENCY

    for t, inputs in enumerate(drive):
        await RisingEdge(dut.clk)
        for name, value in inputs.items():
            getattr(dut, name).value = value
        await ReadOnly()
        if t < LATENCY:
            continue
        past, row = drive[t - LATENCY], expect[t - LATENCY]
        assert int(dut.out_valid.value) == past["in_valid"], f"cycle {t}: out_valid"
        if row is not None:
            got = unpack(int(dut.out_data.value), 8, LANES)
            assert got == row, f"cycle {t}: out_data {got}, expected {row} for {past}"
            assert int(dut.out_raw.value) == past["in_acc"], f"cycle {t}: out_raw"
    return sum(row is not None for row in expect)


@cocotb.test()
async def random_requantization(dut):
    """Random bursts match the reference exactly; out_raw is the input delayed."""
    await start(dut, in_valid=0)
    assert await check_bursts(dut, np.random.default_rng(3), bursts=400) > 2000


@cocotb.test()
async def largest_shift(dut):
    """Shift 63 everywhere: the rounding term is 2**62, the most the arithmetic has to carry."""
    await start(dut, in_valid=0)
    await check_bursts(dut, np.random.default_rng(4), bursts=20, shift=63)
