"""What a configuration needs of an FPGA (multipliers, block RAM, LUTs, flip-flops), estimated before
synthesis, and each board chip's budget; :func:`check_fits` refuses a configuration that cannot fit."""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from mvu.hdl.contract.config import HardwareConfig

__all__ = ["Chip", "CHIPS", "ResourceError", "estimate", "check_fits", "RESOURCES", "MEMORY_LOGIC"]

#: The resources estimated and budgeted, in the order reports list them.
RESOURCES = ("dsp", "bram", "lut", "ff")


class ResourceError(ValueError):
    """A configuration needs more of a resource than the chip has."""


@dataclass(frozen=True)
class Chip:
    """An FPGA's budget of each resource, its primitives' names, and its block RAM's shapes.

    ``bram_shapes``: (depth, width) of one block RAM in each of its modes; ``multiplier_width``: the
    widest signed operand one DSP multiplies, so a 32 x 32 product takes ``ceil(32 / w) ** 2`` of them.
    """

    name: str
    family: str
    budget: dict[str, int]
    primitives: dict[str, str]
    bram_shapes: tuple[tuple[int, int], ...]
    multiplier_width: int


CHIPS = {
    "LFE5U-85F": Chip(
        "LFE5U-85F", "ecp5", {"dsp": 156, "bram": 208, "lut": 83640, "ff": 83640},
        {"dsp": "MULT18X18D", "bram": "DP16KD", "lut": "LUT4", "ff": "TRELLIS_FF"},
        ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36)), 18),
    "iCE40UP5K": Chip(
        "iCE40UP5K", "ice40", {"dsp": 8, "bram": 30, "lut": 5280, "ff": 5280},
        {"dsp": "SB_MAC16", "bram": "SB_RAM40_4K", "lut": "SB_LUT4", "ff": "SB_DFF"},
        ((256, 16), (512, 8), (1024, 4), (2048, 2)), 16),
}

# Logic per part (``lut``: LUT4s with carry and RAM halves, nextpnr's TRELLIS_COMB), calibrated on the
# ULX3S builds (8x8, fixed point: 20.4 k LUT and 15.7 k FF; 40.3 k and 19.9 k with the residual add) and
# Yosys 0.70 runs of larger cores
# (../shared/TOOLCHAIN.md); the float32 path's share is the roughest. An array cell registers its
# activation, three weights (active and two shadow banks, chosen by an 8-bit 2:1 at the swap), its product and a
# 32-bit partial sum and adds; a lane pipelines six
# post-processor stages of 32- to 64-bit values and the residual add's; the rest (command processor, load and store units, CSRs, host
# link, UART) grows with the memory port.
#: The load unit's window set-up multiplies addresses (measured: 7 MULT18X18D); its request FIFO and the
#: host link take block RAM beside the buffers (measured: 2 DP16KD).
_WINDOW_DSPS, _FIFO_BRAMS = 7, 2
_CELL = {"lut": 68, "ff": 102}
_LANE = {"lut": 910, "ff": 700}
_RESIDUAL_LANE = {"lut": 2490, "ff": 520}  # the ULX3S builds with and without it, over 8 lanes
_FLOAT32_LANE = {"lut": 650, "ff": 690}  # the README: ~18 k LUT4 and ~22 k FF over 32 lanes
#: The accumulators' maximum: a 32-bit signed comparison (a carry chain) and a 32-bit 2:1 choice per lane; counted
#: from the logic, not yet measured on a board (no preset builds it).
_MAX_POOL_LANE = {"lut": 64, "ff": 0}
_CONTROL = {"lut": 8000, "ff": 3000}
_PER_PORT_BYTE = {"lut": 200, "ff": 90}
#: Logic of each memory a board can give the core beside its block RAM: none for on-chip memory; the SDRAM
#: controller measured with a traffic stub on its pins (docs/boards.md: 621 LUT4 and 425 FF, stub included,
#: no multiplier), and 5 MULT18X18D more in the ULX3S top on its SDRAM than on block RAM (104 against 99;
#: Yosys maps some address arithmetic of the wider memory to DSPs; which is not traced).
MEMORY_LOGIC = {"bram": {"lut": 0, "ff": 0, "dsp": 0}, "sdram": {"lut": 621, "ff": 425, "dsp": 5}}


def _blocks(chip: Chip, width: int, depth: int) -> int:
    """Block RAMs holding ``depth`` words of ``width`` bits, in the best of the chip's shapes."""
    return min(ceil(width / w) * ceil(depth / d) for d, w in chip.bram_shapes)


def estimate(config: HardwareConfig, chip: Chip, *, memory_bytes: int = 0, memory: str = "bram") -> dict[str, int]:
    """Rough need of each of :data:`RESOURCES` for the core and its ``memory`` (one of :data:`MEMORY_LOGIC`):
    ``memory_bytes`` of on-chip memory beside it (``"bram"``, a board without external memory), or the
    controller of ``memory_bytes`` of SDRAM (``"sdram"``, no block RAM)."""
    if memory not in MEMORY_LOGIC:
        raise ValueError(f"a board's memory is one of {', '.join(MEMORY_LOGIC)}, not {memory!r}")
    cells, lanes = config.rows * config.cols, config.cols
    w = chip.multiplier_width
    # a lane's post-processor product (32 x 32) and residual add products (two of 53 x 9 bits)
    multipliers = ceil(32 / w) ** 2 + (2 * ceil(53 / w) * ceil(9 / w) if config.residual_add else 0)
    memories = [(8 * config.rows, config.act_depth), (8 * config.cols, config.wgt_depth),
                # the accumulators have two read ports (accumulate, store): two copies
                (32 * config.cols, config.acc_depth), (32 * config.cols, config.acc_depth),
                (8 * config.cols, 64)]  # the store unit's addend FIFO
    # (the store unit's lookup tables, 256 bytes per lane, go to LUT RAM)
    if memory == "bram" and memory_bytes:
        memories.append((8 * config.mem_bytes, memory_bytes // config.mem_bytes))
    need = {"dsp": cells + multipliers * lanes + _WINDOW_DSPS + MEMORY_LOGIC[memory]["dsp"],
            "bram": sum(_blocks(chip, w, d) for w, d in memories) + _FIFO_BRAMS}
    for kind in ("lut", "ff"):
        lane = (_LANE[kind] + (_FLOAT32_LANE[kind] if config.float32_requant else 0)
                + (_RESIDUAL_LANE[kind] if config.residual_add else 0)
                + (_MAX_POOL_LANE[kind] if config.max_pool else 0))
        need[kind] = (_CELL[kind] * cells + lane * lanes + _CONTROL[kind]
                      + _PER_PORT_BYTE[kind] * config.mem_bytes + MEMORY_LOGIC[memory][kind])
    return need


def check_fits(config: HardwareConfig, chip: Chip, *, memory_bytes: int = 0, memory: str = "bram") -> dict[str, int]:
    """The estimate, after raising :class:`ResourceError` for the first resource over the chip's budget."""
    need = estimate(config, chip, memory_bytes=memory_bytes, memory=memory)
    for kind in RESOURCES:
        if need[kind] > chip.budget[kind]:
            raise ResourceError(
                f"{config.describe()} does not fit the {chip.name}: it needs about {need[kind]:,} "
                f"{chip.primitives[kind]} ({kind}) but the chip has {chip.budget[kind]:,}")
    return need
