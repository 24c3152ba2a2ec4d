"""Window LOADs (implicit im2col) for execution plans: their entries gathered from memory in one indexing per run.

A plan treats the entries of the program's window LOADs as rows of a scratch matrix at addresses from
:data:`SCRATCH_BASE` on, as if plain LOADs had read them there. Each run of consecutive window LOADs that differ
only in their K tile becomes a band whose rows hold their entries side by side (LOAD ``j`` in columns
``j * rows ..``), so the K tiles of a row block read back as one matrix, and the bands of the next row blocks
continue it.
"""

from __future__ import annotations

import numpy as np

from mvu.hdl.contract.isa import Buffer, Opcode
from mvu.hdl.contract.window import WINDOW_FIELDS, window_extent, window_rows

__all__ = ["SCRATCH_BASE", "WindowGather", "layout_windows"]

#: Where the scratch rows start in a plan's addresses: past any memory the 32-bit port reaches.
SCRATCH_BASE = 1 << 48


class WindowGather:
    """The scratch rows: each one's source address in memory, or a fill byte for rows outside the input."""

    def __init__(self, width: int, sources: np.ndarray, inside: np.ndarray, fills: np.ndarray):
        self.width = width
        self.sources = np.where(inside, sources, 0)
        self.pads = np.flatnonzero(~inside)
        self.fills = fills[self.pads, None]

    def gather(self, memory: np.ndarray) -> np.ndarray:
        """The scratch rows for ``memory``, ``[rows, width]`` bytes."""
        rows = np.lib.stride_tricks.as_strided(memory, (memory.size - self.width + 1, self.width), (1, 1),
                                               writeable=False)
        scratch = rows[self.sources]
        scratch[self.pads] = self.fills
        return scratch


def layout_windows(columns: dict[str, np.ndarray], width: int
                   ) -> tuple[dict[str, np.ndarray], WindowGather, list[tuple[int, int, int, int]]] | None:
    """``columns`` with each window LOAD turned into a plain LOAD of scratch rows, the gather that fills them and
    the memory each reads (its input rectangle, as ``(start, 1, bytes, 0)``); ``None`` when a window LOAD fills
    the weight buffer (left to the interpreter)."""
    loads = np.flatnonzero((columns["opcode"] == Opcode.LOAD) & (columns["window"] != 0))
    if (columns["buffer"][loads] != Buffer.ACT).any():
        return None
    count = columns["count"][loads]
    total = int(count.sum())
    sources, inside, fills = np.zeros(total, np.int64), np.zeros(total, bool), np.zeros(total, np.uint8)
    dram_addr, dram_stride = columns["dram_addr"].copy(), columns["dram_stride"].copy()
    reads = []
    row = 0
    for band in _bands(columns, loads):
        entries, lanes = int(count[band[0]]), band.size
        for lane, index in enumerate(loads[band].tolist()):
            fields = [int(columns[name][index]) for name in ("dram_addr", "dram_stride", *WINDOW_FIELDS)]
            where = row + lane + lanes * np.arange(entries)
            sources[where], inside[where] = window_rows(entries, *fields[:-1])
            fills[where] = fields[-1]
            dram_addr[index] = SCRATCH_BASE + (row + lane) * width
            dram_stride[index] = lanes * width
            address, stride, row_stride, in_h, in_w = fields[:5]
            reads.append((address, 1, window_extent(address, stride, row_stride, in_h, in_w, width) - address, 0))
        row += entries * lanes
    return columns | {"dram_addr": dram_addr, "dram_stride": dram_stride}, WindowGather(width, sources, inside,
                                                                                         fills), reads


def _bands(columns: dict[str, np.ndarray], loads: np.ndarray) -> list[np.ndarray]:
    """Runs (positions in ``loads``) of window LOADs that follow each other in the program and differ only in the
    K tile they read: one entry count and output pixel, a channel offset within the same input pixel (not another
    image), and evenly spaced buffer entries."""
    same = ("count", "start_y", "start_x", "dram_stride", "row_stride")
    bands, start = [], 0
    for k in range(1, loads.size + 1):
        this, last, first = (int(loads[i]) for i in (min(k, loads.size - 1), k - 1, start))
        if k < loads.size and this == last + 1 and all(columns[f][this] == columns[f][first] for f in same) and (
                abs(columns["dram_addr"][this] - columns["dram_addr"][first]) < columns["dram_stride"][first]) and (
                k == start + 1 or columns["sram_addr"][this] - columns["sram_addr"][last]
                == columns["sram_addr"][int(loads[start + 1])] - columns["sram_addr"][first]):
            continue
        bands.append(np.arange(start, k))
        start = k
    return bands
