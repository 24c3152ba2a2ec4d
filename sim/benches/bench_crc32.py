"""cocotb bench of :class:`mvu.hdl.crc32.Crc32` against ``zlib.crc32``.

Random bytes are added with random idle cycles; now and then a sequence
starts over with ``clear`` (with or without a byte in the same cycle), or is
followed by its own CRC, which must leave the residue. ``crc`` is checked
every cycle.
"""

import random
import struct
import zlib
from collections import deque

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.crc32 import RESIDUE, Crc32
from mvu.sim.benches.runner import start


def component() -> Crc32:
    return Crc32()


@cocotb.test()
async def random_sequences(dut):
    """``crc`` is zlib's CRC of the bytes since the last clear, every cycle of 20,000."""
    rng = random.Random(13)
    sequence, queued, residues = b"", deque(), 0
    await start(dut, clear=0, valid=0, data=0)
    for cycle in range(20_000):
        await RisingEdge(dut.clk)
        if queued:
            clear, valid, byte = 0, 1, queued.popleft()
        else:
            clear, valid, byte = rng.random() < 0.01, rng.random() < 0.7, rng.getrandbits(8)
        dut.clear.value, dut.valid.value, dut.data.value = clear, valid, byte
        await ReadOnly()
        got = int(dut.crc.value)
        assert got == zlib.crc32(sequence), f"cycle {cycle}: crc {got:08x}, zlib {zlib.crc32(sequence):08x}"
        residues += got == RESIDUE
        sequence = (b"" if clear else sequence) + (bytes([byte]) if valid else b"")
        if not queued and rng.random() < 0.01:
            queued.extend(struct.pack("<I", zlib.crc32(sequence)))
    assert residues > 50, f"only {residues} sequences were followed by their CRC"
