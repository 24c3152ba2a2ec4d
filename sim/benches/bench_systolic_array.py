"""cocotb bench of :class:`mvu.hdl.systolic_array.SystolicArray` against ``a @ W`` in numpy.

The bench skews the inputs as the array expects: an activation vector
entering row 0 in cycle ``t`` enters row ``r`` in cycle ``t + r``, and column
``c`` of the weight-shift chain runs ``c`` cycles after column 0. Column
``c`` of the vector's dot products then leaves in cycle ``t + rows + 2 + c``.
Random int8 tiles shift into the two shadow banks in turn while earlier tiles'
activations stream, as early as the array allows, and the partial sums are as narrow as the array
accepts, so the widest sums (extreme tiles and activations) must still fit.
"""

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.systolic_array import SystolicArray
from mvu.sim.benches.runner import pack, start, unpack

R, C = 4, 3
PSUM_BITS = 17 + (R - 1).bit_length()
#: From a vector entering row 0 to column 0 of its dot products.
LATENCY = R + 2


def component() -> SystolicArray:
    return SystolicArray(R, C, PSUM_BITS)


def schedule(rng: np.random.Generator, jobs: int):
    """Per-cycle inputs and expected outputs for ``jobs`` tiles, each used by a burst of activation vectors.

    Tile ``j`` shifts into bank ``j % 2``: its shifts into column 0 start
    ``R - 1`` cycles after tile ``j - 2``'s first vector entered row 0 and
    after tile ``j - 1``'s shifts, or later; its first vector, flagged
    ``act_first`` with its bank on ``act_bank``, enters ``R`` cycles after its
    first shift, or later.
    Returns ``(drive, expect)``: ``drive[t]`` maps ports to values in cycle
    ``t``; ``expect[t]`` maps columns to the value ``psum`` must show then.
    """
    slack = lambda: int(rng.choice((0, 0, 0, 1, 4)))
    acts, firsts, banks, shifts, expect = {}, {}, {}, {}, {}
    previous_firsts = [1 - R, 1 - R]  # per bank; the first shifts start in cycle 0
    act_free = shift_free = 0
    for j in range(jobs):
        bank = j % 2
        extreme = rng.random() < 0.2
        tile = rng.choice([-128, 127], (R, C)) if extreme else rng.integers(-128, 128, (R, C))
        s0 = max(shift_free, previous_firsts[bank] + R - 1 + slack())
        for k in range(R):  # last row first
            for c in range(C):
                shifts[(s0 + k + c, c)] = (int(tile[R - 1 - k, c]), bank)
        shift_free = s0 + R
        t = max(act_free, s0 + R + slack())
        previous_firsts[bank] = t
        for index in range(int(rng.integers(1, 9))):
            vector = rng.choice([-255, 255], R) if extreme else rng.integers(-255, 256, R)
            for r in range(R):
                acts[(t + r, r)] = int(vector[r])
                firsts[(t + r, r)] = int(index == 0)
                banks[(t + r, r)] = bank
            for c, value in enumerate(vector @ tile):
                expect.setdefault(t + LATENCY + c, {})[c] = int(value)
            act_free = t + 1
            t += 1 + (0 if rng.random() < 0.7 else int(rng.integers(1, 4)))

    end = max(expect) + 1
    drive = []
    for t in range(end):
        drive.append({
            "act": pack([acts.get((t, r), int(rng.integers(-255, 256))) for r in range(R)], 9),
            "act_first": pack([firsts.get((t, r), 0) for r in range(R)], 1),
            "act_bank": pack([banks.get((t, r), int(rng.integers(2))) for r in range(R)], 1),
            "wl_data": pack([shifts.get((t, c), (int(rng.integers(-128, 128)),))[0] for c in range(C)], 8),
            "wl_en": pack([(t, c) in shifts for c in range(C)], 1),
            "wl_bank": pack([shifts.get((t, c), (0, int(rng.integers(2))))[1] for c in range(C)], 1),
        })
    return drive, expect


@cocotb.test()
async def random_tiles_overlapped(dut):
    """Every dot product equals the model, with tiles shifting in while the previous one streams."""
    drive, expect = schedule(np.random.default_rng(11), jobs=150)
    await start(dut)
    wrong = []
    for t, inputs in enumerate(drive):
        await RisingEdge(dut.clk)
        for name, value in inputs.items():
            getattr(dut, name).value = value
        await ReadOnly()
        if t in expect:
            got = unpack(int(dut.psum.value), PSUM_BITS, C, signed=True)
            wrong += [(t, c, got[c], value) for c, value in expect[t].items() if got[c] != value]
    assert not wrong, f"{len(wrong)} wrong sums, first (cycle, column, got, expected): {wrong[:4]}"
    assert sum(len(columns) for columns in expect.values()) > 1500
