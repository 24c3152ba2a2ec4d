"""cocotb bench of :class:`mvu.hdl.lookup_table.LookupTable` against numpy's indexing ``table[row]``.

Rounds of: a random table written beat by beat in a random order with idle
cycles between beats (its old entries still there until then), then a burst
of random rows, each looked up or passed through, with gaps; the table is
rewritten only once the previous burst has come out.
"""

import cocotb
import numpy as np

from mvu.hdl.contract.isa import TABLE_BYTES
from mvu.hdl.lookup_table import LookupTable
from mvu.sim.benches.runner import drive_rows, pack, start

LANES, BEAT = 5, 4
LATENCY = LookupTable.latency
IDLE = {"write_en": 0, "in_valid": 0}


def component() -> LookupTable:
    return LookupTable(LANES, BEAT)


def random_round(rng: np.random.Generator, table: np.ndarray) -> tuple[list[dict], list]:
    """Inputs per cycle for one round and the row expected out of each (``None``: no row), updating ``table``."""
    drive, expect = [], []
    beats = rng.permutation(TABLE_BYTES // BEAT)
    written = rng.integers(0, 256, TABLE_BYTES, dtype=np.uint8)
    for beat in beats[:int(rng.integers(0, beats.size + 1))]:  # some rounds keep part of the old table
        table[beat * BEAT:(beat + 1) * BEAT] = written[beat * BEAT:(beat + 1) * BEAT]
        drive.append({"write_en": 1, "write_beat": int(beat),
                      "write_data": pack(written[beat * BEAT:(beat + 1) * BEAT], 8), "in_valid": 0,
                      "in_data": pack(rng.integers(0, 256, LANES), 8)})
        expect.append(None)
        if rng.random() < 0.3:
            drive.append(IDLE)
            expect.append(None)
    for _ in range(int(rng.integers(1, 40))):
        row, enable = rng.integers(0, 256, LANES), int(rng.random() < 0.8)
        valid = int(rng.random() < 0.8)
        drive.append({"write_en": 0, "in_valid": valid, "in_data": pack(row, 8), "enable": enable})
        expect.append((table[row] if enable else row).tolist() if valid else None)
    drive += [IDLE] * LATENCY
    expect += [None] * LATENCY
    return drive, expect


@cocotb.test()
async def random_tables_and_rows(dut):
    """Every cycle: ``out_valid`` is ``in_valid`` delayed; each row comes out looked up in the table as
    written so far, or unchanged."""
    rng = np.random.default_rng(16)
    await start(dut, write_en=0, in_valid=0)
    # The whole table is written first: the memory starts undefined.
    table = rng.integers(0, 256, TABLE_BYTES, dtype=np.uint8)
    drive = [{"write_en": 1, "write_beat": b, "write_data": pack(table[b * BEAT:(b + 1) * BEAT], 8), "in_valid": 0}
             for b in range(TABLE_BYTES // BEAT)]
    expect = [None] * len(drive)
    for _ in range(100):
        more, wanted = random_round(rng, table)
        drive += more
        expect += wanted
    looked_up = await drive_rows(dut, drive, expect, LATENCY, LANES)
    assert looked_up > 1000
