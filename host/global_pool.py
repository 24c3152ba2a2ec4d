"""Global average pooling as a program for the matrix-vector unit: channel sums accumulated through unit weight tiles.

An image's pixels are rows of its channels-last tensor ``[P][Cp]``; an activation entry is ``rows`` channels of one
pixel. A COMPUTE of a unit weight tile (ones where an activation lane and an output column are the same channel)
streams one pixel's channel groups into as many accumulator entries; the next pixel's COMPUTE accumulates onto the
same entries, so ``P`` COMPUTEs leave each channel's sum over the image, which the STOREs requantize (the
post-processor's float32 mode is onnxruntime's QLinearGlobalAveragePool). The array streams ``rows`` channels of
a pixel a cycle: ResNet-50's 7 x 7 x 2048 pool is 3136 entries, about as many cycles as its 100 KB take to load.
"""

from __future__ import annotations

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import Buffer, Opcode
from mvu.hdl.contract.program import InstructionColumns, MemoryImage, Program
from mvu.hdl.contract.requantization import Requantization, requantization_block
from mvu.host.gemm import ADDRESS_SPACE, GemmError

__all__ = ["GlobalPoolProgram", "global_pool_limit", "unit_tiles"]



def _blocks(total: int, most: int) -> list[tuple[int, int]]:
    """``(start, size)`` of the fewest blocks of at most ``most`` that cut ``total``, as even as whole blocks allow."""
    size = -(-total // -(-total // most))
    return [(start, min(size, total - start)) for start in range(0, total, size)]


def global_pool_limit(config: HardwareConfig, pixels: int, *, float32_scale: bool = True) -> str | None:
    """What keeps a global pool over ``pixels`` pixels per image (requantized in float32, as QLinearGlobalAveragePool
    is, with ``float32_scale``) off the accelerator of ``config``, or ``None``."""
    if float32_scale and not config.float32_requant:
        return (f"float32 requantization is not built into {config.describe()}; use fixed-point scales or a "
                f"configuration with float32_requant")
    subs, parts = max(1, config.cols // config.rows), max(1, config.rows // config.cols)
    act_half, acc_half = config.act_depth // 2, config.acc_depth // 2
    if subs * pixels > act_half or parts > acc_half:
        return (f"a global pool of {pixels} pixels per image needs {subs * pixels} activation and {parts} "
                f"accumulator entries per channel group; half the buffers of {config.describe()} hold {act_half} "
                f"and {acc_half}")
    return None


def unit_tiles(rows: int, cols: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The unit weight tiles ``[G, rows, cols]`` int8 and each one's ``(sub, part)``: over a group of ``max(rows,
    cols)`` channels, activation sub-entry ``sub`` (its ``rows`` channels) meets output part ``part`` (``cols``
    channels); tile ``(sub, part)`` is one where lane ``r`` and column ``c`` are the same channel,
    ``sub * rows + r == part * cols + c``. One side of the array divides the other, so one of them is always 0."""
    count = max(rows, cols) // min(rows, cols)
    pairs = [(g, 0) if cols > rows else (0, g) for g in range(count)]
    tiles = np.zeros((count, rows, cols), np.int8)
    for g, (sub, part) in enumerate(pairs):
        lane = np.arange(rows)
        column = sub * rows + lane - part * cols
        inside = (column >= 0) & (column < cols)
        tiles[g, lane[inside], column[inside]] = 1
    return tiles, pairs


class GlobalPoolProgram:
    """A global average pool laid out in memory with the program that computes it.

    ``a`` is the channels-last input ``[N, H, W, C]`` (uint8 or int8); ``w`` must be ``None`` (the unit tiles are
    the program's own; the argument keeps :meth:`mvu.host.runtime.runner.ModelRunner.gemm`'s call). ``requant``
    applies one requantization to every channel (``None``: raw int32 sums); for onnxruntime's
    QLinearGlobalAveragePool it is float32 with the significand and shift of ``in_scale / (out_scale * H * W)``.
    :meth:`result` reads ``[N, C]`` back. Memory holds the activations ``[N * H * W][Cp]`` (channels padded with
    the zero point to a multiple of ``max(rows, cols)``), the unit tiles, one parameter block and the outputs
    ``[N][Cp]``. Each chunk (images by channel groups filling at most half the activation buffer) is one window
    LOAD per sub-entry, ordering entries pixel by pixel with the chunk's channel groups together, one COMPUTE per
    (unit tile, image, pixel) and one STORE per (output part, image); chunks alternate buffer halves with tokens
    as :class:`mvu.host.gemm.GemmProgram`'s blocks do. ``memory_bytes_per_cycle`` is accepted for the runner's
    call; the chunking does not depend on it.
    """

    def __init__(self, config: HardwareConfig, a: np.ndarray, w: None = None, *, act_zero_point: int = 0,
                 requant: Requantization | None = None, memory_bytes_per_cycle: float | None = None,
                 table: np.ndarray | None = None):
        a = np.asarray(a)
        if a.ndim != 4 or 0 in a.shape:
            raise GemmError(f"a global pool's input is a channels-last [N, H, W, C] tensor, not {a.shape}")
        if a.dtype not in (np.uint8, np.int8):
            raise GemmError(f"activations must be uint8 or int8, not {a.dtype}")
        if w is not None or table is not None:
            raise GemmError("a global pool program takes no weights and no output table")
        self.act_signed = a.dtype == np.int8
        low, high = (-128, 127) if self.act_signed else (0, 255)
        if not low <= act_zero_point <= high:
            raise GemmError(f"activation zero point {act_zero_point} is outside {low}..{high} for {a.dtype}")
        if requant is not None:
            _check_requantization(requant, a.shape[3])
        float32_scale = requant is not None and requant.float32_scale
        problem = global_pool_limit(config, a.shape[1] * a.shape[2], float32_scale=float32_scale)
        if problem is not None:
            raise GemmError(problem)
        self.config, self.act_zero_point, self.requant = config, act_zero_point, requant
        images, height, width, channels = a.shape
        self.shape = a.shape
        self.m, self.k, self.n = images, height * width, channels
        self._group = max(config.rows, config.cols)
        self._width = -(-channels // self._group) * self._group
        self._element = 4 if requant is None else 1
        needed = images * self.k * self._width + images * self._width * self._element + config.param_block_bytes
        if needed >= ADDRESS_SPACE:
            raise GemmError(f"this pool needs {needed} bytes of external memory; the memory port addresses "
                            f"{ADDRESS_SPACE} bytes")
        self.chunks = self._chunks()
        self.program = self._build(a)

    @property
    def macs(self) -> int:
        """Useful additions: one per image, pixel and channel."""
        return self.m * self.k * self.n

    def _chunks(self) -> list[tuple[int, int, int, int]]:
        """``(first image, images, first group, groups)`` per chunk: whole images' pixels for a range of channel
        groups, as many as half the activation and accumulator buffers hold, in as few chunks as that allows."""
        cfg, pixels = self.config, self.k
        subs, parts = max(1, cfg.cols // cfg.rows), max(1, cfg.rows // cfg.cols)
        act_half, acc_half = cfg.act_depth // 2, cfg.acc_depth // 2
        groups = self._width // self._group
        most = min(groups, act_half // (subs * pixels), acc_half // parts)  # >= 1: global_pool_limit checked
        group_blocks = _blocks(groups, most)
        images = 1 if len(group_blocks) > 1 else min(act_half // (subs * pixels * groups),
                                                      acc_half // (parts * groups))
        return [(i0, count, g0, size) for i0, count in _blocks(self.m, images) for g0, size in group_blocks]

    def _build(self, a: np.ndarray) -> Program:
        cfg, R, C, U = self.config, self.config.rows, self.config.cols, self._group
        pixels, pitch, element = self.k, self._width, self._element
        memory = MemoryImage()
        self._a_base = memory.place(self._padded(a))
        tiles, pairs = unit_tiles(R, C)
        w_base = memory.place(tiles)
        rq = self.requant
        quantized = {}
        if rq is not None:
            p_base = memory.place(requantization_block(cfg, *(np.full(C, v[0]) for v in (rq.bias, rq.multiplier,
                                                                                           rq.shift))))
            quantized = dict(param_addr=p_base, out_zero_point=rq.out_zero_point, float32_scale=rq.float32_scale)
        low, high = (-128, 127) if rq is None else (rq.clamp_min, rq.clamp_max)
        self._out_bytes = self.m * pitch * element
        self.out_base = memory.allocate(self._out_bytes)

        act_half, acc_half = cfg.act_depth // 2, cfg.acc_depth // 2
        subs = max(1, C // R)
        program = InstructionColumns()
        program.add(Opcode.LOAD, 1, buffer=Buffer.WGT, sram_addr=0, count=tiles.shape[0] * R, dram_addr=w_base,
                    dram_stride=C)
        active = None  # the tile in the array

        def loads(c: int) -> None:
            i0, images, g0, groups = self.chunks[c]
            entries = images * pixels * groups
            program.add(Opcode.LOAD, subs, buffer=Buffer.ACT, window=True,
                        sram_addr=(c % 2) * act_half + np.arange(subs) * entries, count=entries,
                        dram_addr=self._a_base + i0 * pixels * pitch + g0 * U + np.arange(subs) * R,
                        dram_stride=U, row_stride=pitch, in_h=images * pixels, in_w=groups, out_w=groups,
                        stride_y=1, stride_x=1, fill=self.act_zero_point & 0xFF,
                        first={"wait_compute": c >= 2}, last={"signal_compute": True})

        def computes(c: int) -> None:
            nonlocal active
            _, images, _, groups = self.chunks[c]
            image, pixel = np.divmod(np.arange(images * pixels), pixels)
            for g, (sub, part) in enumerate(pairs):
                first = {"preload": active != g}
                if g == 0:
                    first |= {"wait_load": True, "wait_store": c >= 2}
                last = {"signal_load": c + 2 < len(self.chunks), "signal_store": True} if g == len(pairs) - 1 else {}
                program.add(Opcode.COMPUTE, images * pixels,
                            act_addr=(c % 2) * act_half + (sub * images * pixels + image * pixels + pixel) * groups,
                            count=groups, acc_addr=(c % 2) * acc_half + (part * images + image) * groups,
                            wgt_addr=g * R, accumulate=(pixel > 0) | (sub > 0), act_signed=self.act_signed,
                            act_zero_point=self.act_zero_point, first=first, last=last)
                active = g

        def stores(c: int) -> None:
            i0, images, g0, groups = self.chunks[c]
            part, image = np.divmod(np.arange(len(pairs) // subs * images), images)
            program.add(Opcode.STORE, part.size, acc_addr=(c % 2) * acc_half + (part * images + image) * groups,
                        count=groups, dram_addr=self.out_base + ((i0 + image) * pitch + g0 * U + part * C) * element,
                        dram_stride=U * element, raw=rq is None, clamp_min=low, clamp_max=high, **quantized,
                        first={"wait_compute": True, "load_params": rq is not None and c == 0},
                        last={"signal_compute": c + 2 < len(self.chunks)})

        loads(0)
        for c in range(len(self.chunks)):
            if c + 1 < len(self.chunks):
                loads(c + 1)
            computes(c)
            stores(c)
        program.add(Opcode.FINISH, 1)
        placed = Program.place_words(memory, program.encode(), macs=self.macs)
        memory.trim()
        return placed

    def _padded(self, a: np.ndarray) -> np.ndarray:
        """``a`` as rows ``[N * H * W][Cp]``, the channels padded with the zero point."""
        rows = a.reshape(-1, a.shape[3])
        padded = np.full((rows.shape[0], self._width), self.act_zero_point, dtype=a.dtype)
        padded[:, :rows.shape[1]] = rows
        return padded

    def _activation_region(self) -> np.ndarray:
        """The activations in the program's memory: rows ``[N * H * W][Cp]``."""
        size = self.m * self.k * self._width
        return self.program.memory.data[self._a_base:self._a_base + size].reshape(-1, self._width)

    def load_activations(self, a: np.ndarray) -> None:
        """New activations of the program's shape and type, so that the program can run again; clears the
        outputs."""
        a = np.asarray(a)
        dtype = np.dtype(np.int8 if self.act_signed else np.uint8)
        if a.shape != self.shape or a.dtype != dtype:
            raise GemmError(f"expected {dtype} activations of shape {self.shape}, got {a.dtype} {a.shape}")
        self._activation_region().view(dtype)[:, :self.n] = a.reshape(-1, self.n)
        self.program.memory.data[self.out_base:self.out_base + self._out_bytes] = 0

    def result(self, *, copy: bool = True) -> np.ndarray:
        """The ``[N, C]`` output: int32 sums when raw, else int8/uint8. With ``copy=False``, a view of the
        program's memory, valid until the program runs again."""
        dtype = np.dtype("<i4") if self.requant is None else self.requant.output_dtype
        outputs = self.program.memory.data[self.out_base:self.out_base + self._out_bytes].view(dtype)
        view = outputs.reshape(self.m, -1)[:, :self.n]
        return view.copy() if copy else view


def _check_requantization(requant: Requantization, channels: int) -> None:
    """Refuse a requantization the program cannot apply: per-channel values."""
    if requant.channels not in (1, channels):
        raise GemmError(f"requantization has {requant.channels} channels; the pool has {channels}")
    if any(np.unique(values).size > 1 for values in (requant.bias, requant.multiplier, requant.shift)):
        raise GemmError("a global pool program requantizes every channel alike; this requantization varies "
                        "by channel")
