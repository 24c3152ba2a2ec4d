"""cocotb bench of :class:`mvu.hdl.residual_add.ResidualAdd` against
:func:`mvu.hdl.contract.residual_add.residual_add`.

Rounds of: new coefficients (while no row is in flight), then a burst of random
rows with gaps, each added or passed through. Coefficients are a real add's
(onnxruntime's float32 ratios and start of random quantizations), random
integers up to the bounds, or sparse integers (few significant bits), whose
sums often fall exactly halfway in one of the three roundings; the bench
counts those ties.
"""

import cocotb
import numpy as np

from mvu.hdl.contract.residual_add import RATIO_LIMIT, START_LIMIT, ResidualAdd, residual_add, round_significant
from mvu.hdl.residual_add import ResidualAdd as ResidualAddBlock
from mvu.sim.benches.runner import drive_rows, pack, start

LANES = 4
LATENCY = ResidualAddBlock.latency
IDLE = {"in_valid": 0}


def component() -> ResidualAddBlock:
    return ResidualAddBlock(LANES)


def _sparse(rng: np.random.Generator, limit: int) -> int:
    value = int(rng.integers(1, 1 << int(rng.integers(1, 12)))) << int(rng.integers(0, 40))
    return min(value, limit - 1) * int(rng.choice([-1, 1]))


def random_add(rng: np.random.Generator) -> ResidualAdd:
    kind = rng.integers(0, 3)
    q_inner, low = bool(rng.integers(0, 2)), int(rng.integers(0, 20))
    high = int(rng.integers(max(low, 200), 256))
    if kind == 0:  # a real add: ratios scale_in / scale_out, start from the zero points
        scales, zero_points = rng.uniform(1e-3, 0.2, 3).astype(np.float32), rng.integers(0, 256, 3)
        ratio_q, ratio_b = scales[0] / scales[2], scales[1] / scales[2]
        start = np.float32(zero_points[2]) - np.float32(np.float32(ratio_q * np.float32(zero_points[0]))
                                                        + np.float32(ratio_b * np.float32(zero_points[1])))
        return ResidualAdd.from_float32(ratio_q, ratio_b, start, q_inner=q_inner, low=low, high=high)
    shift = int(rng.integers(0, 64))
    if kind == 1:
        ratios = [int(rng.integers(-RATIO_LIMIT + 1, RATIO_LIMIT)) >> int(rng.integers(0, 50)) for _ in range(2)]
        start = int(rng.integers(-START_LIMIT + 1, START_LIMIT)) >> int(rng.integers(0, 58))
    else:
        ratios, start = [_sparse(rng, RATIO_LIMIT) for _ in range(2)], _sparse(rng, START_LIMIT)
    return ResidualAdd(ratios[0], ratios[1], start, shift, q_inner, low, high)


def _drive_add(add: ResidualAdd) -> dict:
    return {"ratio_q": add.ratio_q & (2**64 - 1), "ratio_b": add.ratio_b & (2**64 - 1),
            "start": add.start & (2**64 - 1), "shift": add.shift, "q_inner": int(add.q_inner), "low": add.low,
            "high": add.high}


def _ties(add: ResidualAdd, q: np.ndarray, b: np.ndarray) -> int:
    """How many lanes' final rounding falls exactly halfway (recomputed from the model's integer steps)."""
    (x_in, r_in), (x_out, r_out) = ((q, add.ratio_q), (b, add.ratio_b))[::1 if add.q_inner else -1]
    outer = round_significant(x_out.astype(np.int64) * r_out
                              + round_significant(x_in.astype(np.int64) * r_in + add.start))
    if add.shift == 0:
        return 0
    return sum(abs(v) % (1 << add.shift) == 1 << (add.shift - 1) for v in outer.tolist())


def random_round(rng: np.random.Generator) -> tuple[list[dict], list, int]:
    """Inputs per cycle for one round, the row expected out of each (``None``: no row) and its final ties."""
    add = random_add(rng)
    drive, expect, ties = [_drive_add(add) | IDLE], [None], 0
    for _ in range(int(rng.integers(1, 30))):
        q, b = rng.integers(0, 256, LANES), rng.integers(0, 256, LANES)
        if rng.random() < 0.3:  # operands that meet the grid's halves more often
            q, b = q & 0xF0, b & 0xF8
        enable, valid = int(rng.random() < 0.9), int(rng.random() < 0.8)
        drive.append({"in_valid": valid, "in_data": pack(q, 8), "addend": pack(b, 8), "enable": enable})
        expect.append((residual_add(q, b, add) if enable else q).tolist() if valid else None)
        ties += _ties(add, q, b) if valid and enable else 0
    drive += [IDLE] * LATENCY
    expect += [None] * LATENCY
    return drive, expect, ties


@cocotb.test()
async def random_adds(dut):
    """Every cycle: ``out_valid`` is ``in_valid`` delayed; each row comes out as the model adds it, or unchanged."""
    rng = np.random.default_rng(12)
    await start(dut, in_valid=0)
    drive, expect, ties = [], [], 0
    for _ in range(400):
        more, wanted, tied = random_round(rng)
        drive += more
        expect += wanted
        ties += tied
    checked = await drive_rows(dut, drive, expect, LATENCY, LANES)
    assert checked > 3000 and ties > 100, (checked, ties)

