# amaranth: UnusedElaboratable=no
"""cocotb bench of :class:`mvu.hdl.matvec.MatrixVectorUnit` against ``(a - zero_point) @ W`` in numpy.

Random int8 tiles are shifted into the two shadow banks in turn while the
tiles before them stream random uint8/int8 activations with random zero
points, as close as the docstring's timing rule allows. Some tiles and activations
take extreme values, for the widest products and sums.
"""

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.interfaces import activation_entries, weight_rows
from mvu.hdl.matvec import MatrixVectorUnit
from mvu.sim.benches.runner import pack, pack_fields, start, unpack

CONFIG = HardwareConfig(rows=4, cols=4, act_depth=64, wgt_depth=32, acc_depth=64, mem_bytes=4)
R, C = CONFIG.rows, CONFIG.cols
LATENCY = MatrixVectorUnit(CONFIG).latency
ENTRY = activation_entries(R).members["payload"].shape
WEIGHTS = weight_rows(C).members["payload"].shape


def entry(data, signed: int, zero_point: int, first: int, bank: int) -> int:
    """An ``acts`` payload."""
    return pack_fields(ENTRY, data=pack(data, 8), signed=signed, zero_point=zero_point, first=first, bank=bank)


def component() -> MatrixVectorUnit:
    return MatrixVectorUnit(CONFIG)


def schedule(rng: np.random.Generator, jobs: int, burst: tuple[int, int] = (1, 9),
             shift_lead: int = 0, act_lead: int = 0):
    """Per-cycle inputs and expected output rows for ``jobs`` tiles, each used by one burst of activations.

    Job ``j`` shifts a fresh tile into shadow bank ``j % 2``, starting ``R``
    cycles after the first activation of job ``j - 2`` (the bank's last
    tile) entered and after job ``j - 1``'s shifts, and its first activation
    (flagged ``first``, with its bank) enters in the cycle of the last shift;
    both get random slack unless ``shift_lead`` or ``act_lead`` (> 0) move
    them that many cycles earlier than the rule allows.
    Returns ``(drive, expect, stats)``: ``drive[t]`` maps port names to values
    for cycle ``t``, ``expect[t]`` is the row ``sums`` must carry in cycle
    ``t`` (or None: ``sums.valid`` low), ``stats`` counts overlapping cycles and
    cycles where a rule's bound was met exactly.
    """
    exact = bool(shift_lead or act_lead)
    slack = lambda: 0 if exact else int(rng.choice((0, 0, 1, 3)))
    shifts, acts = {}, {}
    stats = {"overlap": 0, "shift_on_bound": 0, "act_on_bound": 0}
    wl_free = act_free = 0
    firsts = [-R, -R]  # per bank: when its last tile's first activation entered
    for j in range(jobs):
        bank = j % 2
        tile = rng.integers(-128, 128, (R, C)) if rng.random() < 0.8 else rng.choice([-128, 127], (R, C))
        bound = firsts[bank] + R - shift_lead
        s0 = max(wl_free, bound + slack())
        stats["shift_on_bound"] += s0 == bound
        for k in range(R):  # last row first
            shifts[s0 + k] = {"weights_valid": 1,
                              "weights_payload": pack_fields(WEIGHTS, row=pack(tile[R - 1 - k], 8), bank=bank)}
        wl_free = s0 + R
        bound = s0 + R - 1 - act_lead
        t = max(act_free, bound + slack())
        stats["act_on_bound"] += t == bound
        firsts[bank] = t
        for index in range(rng.integers(*burst)):
            signed = bool(rng.integers(2))
            data = rng.integers(0, 256, R)
            zero_point = int(rng.integers(-128, 128) if signed else rng.integers(0, 256))
            if rng.random() < 0.15:  # the widest products and sums: centred values of -255 or 255
                data, zero_point = ((np.full(R, 0x80), 127) if signed else
                                    (np.full(R, 255), 0) if rng.integers(2) else (np.zeros(R, int), 255))
            values = data.astype(np.int8) if signed else data
            acts[t] = ({"acts_valid": 1, "acts_payload": entry(data, int(signed), zero_point, int(index == 0), bank)},
                       [int(v) for v in (values.astype(np.int64) - zero_point) @ tile])
            act_free = t + 1
            t += 1 + (0 if exact or rng.random() < 0.8 else int(rng.integers(1, 3)))

    end = max(max(shifts), max(acts)) + LATENCY + 3
    drive, expect = [], [None] * end
    for t in range(end):
        garbage = {"acts_valid": 0,
                   "acts_payload": entry(rng.integers(0, 256, R), int(rng.integers(2)),
                                         int(rng.integers(-(1 << 15), 1 << 15)), int(rng.integers(2)),
                                         int(rng.integers(2))),
                   "weights_valid": 0, "weights_payload": int(rng.integers(0, 1 << (8 * C + 1)))}
        cycle = garbage | shifts.get(t, {})
        if t in acts:
            cycle |= acts[t][0]
            expect[t + LATENCY] = acts[t][1]
        stats["overlap"] += t in shifts and t in acts
        drive.append(cycle)
    return drive, expect, stats


async def simulate(dut, drive, expect) -> list[tuple[int, list[int], list[int]]]:
    """Apply ``drive`` cycle by cycle; return the wrong rows as ``(cycle, got, expected)``.

    ``sums.valid`` must be high exactly in the cycles that expect a row.
    """
    wrong = []
    for t, (inputs, row) in enumerate(zip(drive, expect)):
        await RisingEdge(dut.clk)
        for name, value in inputs.items():
            getattr(dut, name).value = value
        await ReadOnly()
        valid = int(dut.sums_valid.value)
        assert valid == (row is not None), f"cycle {t}: sums.valid is {valid}"
        if valid:
            got = unpack(int(dut.sums_payload.value), 32, C, signed=True)
            if got != row:
                wrong.append((t, got, row))
    return wrong


@cocotb.test()
async def random_tiles_overlapped(dut):
    """Every output row equals the model, with tile loads overlapping the previous tile's stream."""
    drive, expect, stats = schedule(np.random.default_rng(1), jobs=200)
    await start(dut, acts_valid=0, weights_valid=0)
    wrong = await simulate(dut, drive, expect)
    assert not wrong, f"{len(wrong)} wrong rows, first (cycle, got, expected): {wrong[:3]}"
    assert sum(row is not None for row in expect) > 600
    assert min(stats.values()) >= 10, f"the timing rule was not exercised enough: {stats}"


@cocotb.test()
async def timing_rule_is_tight(dut):
    """One cycle earlier than the rule allows, shifts or activations corrupt results."""
    await start(dut, acts_valid=0, weights_valid=0)
    for name, lead, burst in (("shift", {"shift_lead": 1}, (6, 7)), ("act", {"act_lead": 1}, (1, 2))):
        drive, expect, stats = schedule(np.random.default_rng(2), jobs=12, burst=burst, **lead)
        assert stats[f"{name}_on_bound"] >= 8, stats
        wrong = await simulate(dut, drive, expect)
        assert len(wrong) >= 8, f"{name}s one cycle early corrupted only {len(wrong)} rows"
