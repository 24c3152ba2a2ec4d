"""Window LOADs (implicit im2col) for execution plans: their entries gathered from memory in one indexing per run.

A plan treats the entries of the program's window LOADs as cells of scratch matrices at addresses from
:data:`SCRATCH_BASE` on, as if plain strided LOADs had read them there: one matrix per input tensor (window
LOADs that share its geometry), a row per (image, output pixel) and a column per (tap offsets, channel offset),
both in order. For a convolution tiled by :class:`~mvu.host.gemm.GemmProgram` that is its patch matrix, so
the plan's products read it whole, as they read a host im2col's. A cell's bytes depend only on its row and
column, so LOADs that read a cell again (another column block's pass) read the same bytes.
"""

from __future__ import annotations

import numpy as np

from mvu.hdl.contract.isa import Buffer, Opcode
from mvu.hdl.contract.window import WINDOW_FIELDS, window_extent, window_rows
from mvu.host.executors.kernels import gather_rows

__all__ = ["SCRATCH_BASE", "WindowGather", "layout_windows"]

#: Where the scratch rows start in a plan's addresses: past any memory the 32-bit port reaches.
SCRATCH_BASE = 1 << 48


class WindowGather:
    """The scratch cells: each one's source address in memory, or a fill byte for cells outside the input.

    Each cell is ``width`` bytes: where every source is a multiple of the width (as at the default configuration),
    all are taken in one indexing of the memory as items of that size; else each is copied from its byte address
    (:func:`~mvu.host.executors.kernels.gather_rows`: a 3-channel stem's tap rows). Every run gathers into the same
    scratch buffer, so the products reading it see it at one address from run to run.
    """

    def __init__(self, width: int, sources: np.ndarray, inside: np.ndarray, fills: np.ndarray):
        self.width = width
        self.sources = np.where(inside, sources, 0).astype(np.int64)
        self.aligned = not (self.sources % width).any()
        if self.aligned:
            self.sources //= width
        self.pads = np.flatnonzero(~inside)
        self.fills = fills[self.pads, None]
        self.scratch = np.empty((sources.size, width), np.uint8)
        self._end = int(self.sources.max(initial=0)) * (width if self.aligned else 1) + width  # of the bytes read

    def gather(self, memory: np.ndarray) -> np.ndarray:
        """The scratch cells for ``memory``, ``[cells, width]`` bytes: :attr:`scratch`, refilled."""
        if self._end > memory.size:  # the program was checked against this memory: never, but the kernel trusts it
            raise ValueError(f"window LOADs read up to byte {self._end - 1} of a memory of {memory.size} bytes")
        if self.aligned:  # mode "clip" takes straight into ``out`` ("raise" buffers it); no index is clipped
            item = f"V{self.width}"
            np.take(memory[:memory.size // self.width * self.width].view(item), self.sources,
                    out=self.scratch.reshape(-1).view(item), mode="clip")
        else:
            gather_rows(memory, self.sources, self.scratch)
        self.scratch[self.pads] = self.fills
        return self.scratch


#: What a window LOAD's bytes depend on besides its entries' pixels, tap offsets and channel offset: its tensor.
_TENSOR = ("dram_stride", "row_stride", "in_h", "in_w", "out_w", "stride_y", "stride_x", "fill")
#: A layout at most this many times larger than the entries loaded is left to the interpreter.
_MOST_CELLS_PER_ENTRY = 4


def layout_windows(columns: dict[str, np.ndarray], width: int
                   ) -> tuple[dict[str, np.ndarray], WindowGather, list[tuple[int, int, int, int]]] | None:
    """``columns`` with each window LOAD turned into a plain LOAD of scratch cells, the gather that fills them and
    the memory each reads (its input rectangle, as ``(start, 1, bytes, 0)``); ``None`` when a window LOAD fills
    the weight buffer, or the scratch matrices would be much larger than what is loaded (left to the
    interpreter)."""
    loads = np.flatnonzero((columns["opcode"] == Opcode.LOAD) & (columns["window"] != 0))
    if (columns["buffer"][loads] != Buffer.ACT).any():
        return None
    field = {name: columns[name][loads] for name in ("dram_addr", "count", *WINDOW_FIELDS, *_TENSOR)}
    _, tensor = np.unique(np.stack([field[name] for name in _TENSOR], axis=1), axis=0, return_inverse=True)
    dram_addr, dram_stride = columns["dram_addr"].copy(), columns["dram_stride"].copy()
    placed, cells = [], 0  # per tensor: (loads, rows, columns, cell of each load's first entry)
    for t in range(tensor.max() + 1):
        mine = np.flatnonzero(tensor.ravel() == t)
        addr = field["dram_addr"][mine]
        image, channel = np.divmod(addr - addr.min(), field["in_h"][mine[0]] * field["row_stride"][mine[0]])
        pixel = field["start_y"][mine] * field["out_w"][mine] + field["start_x"][mine]
        pixels = int((pixel + field["count"][mine]).max())
        keys, column = np.unique(np.stack([field["offset_y"][mine], field["offset_x"][mine], channel], axis=1),
                                 axis=0, return_inverse=True)
        first = cells + (image * pixels + pixel) * len(keys) + column.ravel()
        placed.append((mine, len(keys), first))
        cells += int((image.max() + 1) * pixels * len(keys))
    if cells > _MOST_CELLS_PER_ENTRY * int(field["count"].sum()) + 1024:
        return None
    sources, inside, fills = np.zeros(cells, np.int64), np.zeros(cells, bool), np.zeros(cells, np.uint8)
    reads = []
    for mine, pitch, first in placed:
        for load, cell in zip(mine.tolist(), first.tolist()):
            index, count = int(loads[load]), int(field["count"][load])
            values = [int(columns[name][index]) for name in ("dram_addr", "dram_stride", *WINDOW_FIELDS)]
            where = cell + pitch * np.arange(count)
            sources[where], inside[where] = window_rows(count, *values[:-1])
            fills[where] = values[-1]
            dram_addr[index], dram_stride[index] = SCRATCH_BASE + cell * width, pitch * width
            address, stride, row_stride, in_h, in_w = values[:5]
            reads.append((address, 1, window_extent(address, stride, row_stride, in_h, in_w, width) - address, 0))
    return columns | {"dram_addr": dram_addr, "dram_stride": dram_stride}, WindowGather(width, sources, inside,
                                                                                         fills), reads
