"""Quantized matrix products of any size, tiled into programs for the matrix-vector unit.

``C[M, N] = requantize((A[M, K] - act_zero_point) @ W[K, N])`` with int8 or
uint8 activations, int8 weights and per-output-channel requantization (or
raw int32 accumulators).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import OPCODE_FIELDS, TABLE_BYTES, Buffer, Opcode
from mvu.hdl.contract.program import InstructionColumns, MemoryImage, Program
from mvu.hdl.contract.requantization import Requantization, requantization_block
from mvu.hdl.contract.residual_add import ADD_BLOCK_BYTES, ResidualAdd
from mvu.host.executors.intmatmul import as_unsigned, centred_matmul
from mvu.host.executors.requantize import requantize_rows

__all__ = ["ADDRESS_SPACE", "golden_gemm", "GemmTiling", "plan_gemm", "GemmProgram", "GemmError", "ConvolutionInput"]

#: Bytes the memory port addresses (32-bit addresses).
ADDRESS_SPACE = 1 << 32


class GemmError(ValueError):
    """A matrix product that cannot be expressed as a program for this hardware."""


def golden_gemm(a: np.ndarray, w: np.ndarray, act_zero_point: int = 0,
                requant: Requantization | None = None, table: np.ndarray | None = None,
                addend: np.ndarray | None = None, residual: ResidualAdd | None = None) -> np.ndarray:
    """The plain definition, with no tiling: int32 accumulators, or requantized bytes (with ``residual`` added to
    the uint8 ``addend`` [M, N], then each looked up in the 256-byte ``table`` if given) viewed as the output
    type."""
    acc = centred_matmul(*as_unsigned(np.asarray(a), act_zero_point), w)
    if requant is None:
        return acc
    out = requantize_rows(acc, requant.bias, requant.multiplier, requant.shift, requant.out_zero_point,
                          requant.clamp_min, requant.clamp_max, float32_scale=requant.float32_scale)
    if residual is not None:
        out = residual(out, addend)
    if table is not None:
        out = np.asarray(table, dtype=np.uint8)[out]
    return out.view(requant.output_dtype)


@dataclass(frozen=True)
class ConvolutionInput:
    """A convolution's activations as a channels-last tensor ``x`` ``[N, H, W, C]`` and the windows it reads.

    The product's rows are the output pixels, image after image, and its K the taps row by row with each tap's
    channels together, as :func:`mvu.host.runtime.runner.im2col` lays out its patches; but no patch matrix is
    formed: the program keeps ``x`` in memory, each pixel's channels padded with the zero point to a multiple of
    ``rows``, and window LOADs (docs/isa.md) read the patches from it. ``pads`` are (top, left, bottom, right).
    """

    x: np.ndarray
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype

    @property
    def out_size(self) -> tuple[int, int]:
        """Output rows and columns of one image."""
        _, h, w, _ = self.x.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        top, left, bottom, right = self.pads
        return (h + top + bottom - dh * (kh - 1) - 1) // sh + 1, (w + left + right - dw * (kw - 1) - 1) // sw + 1

    @property
    def shape(self) -> tuple[int, int]:
        """The implicit patch matrix's shape, ``(N * Ho * Wo, kh * kw * C)``."""
        n, _, _, c = self.x.shape
        ho, wo = self.out_size
        return n * ho * wo, self.kernel[0] * self.kernel[1] * c

    def padded_channels(self, rows: int) -> int:
        return -(-self.x.shape[3] // rows) * rows

    def check(self) -> None:
        """Refuse geometry that window LOADs cannot express, naming the limit."""
        problem = self.limit()
        if problem is not None:
            raise GemmError(problem)

    def limit(self) -> str | None:
        """What window LOADs cannot express of this convolution, or ``None``."""
        if self.x.ndim != 4:
            return f"a convolution's input is a channels-last [N, H, W, C] tensor, not {self.x.shape}"
        _, h, w, _ = self.x.shape
        (kh, kw), (dh, dw) = self.kernel, self.dilations
        top, left = self.pads[:2]
        if min(self.out_size) < 1 or min(self.kernel) < 1 or min(self.dilations) < 1:
            return (f"convolution of {h} x {w} with kernel {self.kernel}, pads {self.pads} and dilations "
                    f"{self.dilations} has no output")
        if not all(1 <= s <= _WINDOW_LIMITS["stride"] for s in self.strides):
            return f"window LOADs take strides 1..{_WINDOW_LIMITS['stride']}, not {self.strides}"
        offsets = (-top, -left, (kh - 1) * dh - top, (kw - 1) * dw - left)
        low, high = _WINDOW_LIMITS["offset"]
        if not all(low <= o <= high for o in offsets):
            return (f"window LOADs take tap offsets (tap * dilation - pad) {low}..{high}; kernel {self.kernel}, "
                    f"dilations {self.dilations} and pads {self.pads} need {offsets}")
        if max(h, w, *self.out_size) > _WINDOW_LIMITS["size"]:
            return (f"window LOADs take images and outputs up to {_WINDOW_LIMITS['size']} pixels a side, not "
                    f"{h} x {w} -> {self.out_size}")
        return None


def _window_limits() -> dict:
    fields = OPCODE_FIELDS[Opcode.LOAD]
    return {"stride": fields["stride_y"].maximum, "offset": (fields["offset_y"].minimum, fields["offset_y"].maximum),
            "size": fields["in_h"].maximum}


_WINDOW_LIMITS = _window_limits()


@dataclass(frozen=True)
class GemmTiling:
    """How a product is cut up: rows per block, weight tiles per block and per chunk."""

    m_block: int
    n_block: int   # column tiles of `cols` per block
    k_chunk: int   # reduction tiles of `rows` loaded at once


def _blocks(total: int, size: int):
    """``(start, size)`` of the fewest blocks of at most ``size`` that cut ``total``, as even as whole blocks allow
    (a short last block would stall its neighbours' pipelining)."""
    start = 0
    for block, count in _block_sizes(total, size):
        for _ in range(count):
            yield start, block
            start += block


def _image_runs(first: int, count: int, per_image: int):
    """Rows ``first .. first + count - 1`` of images of ``per_image`` rows each, as ``(offset in the rows,
    (image, first row within it, rows))`` per image they cross."""
    offset = 0
    while offset < count:
        image, row = divmod(first + offset, per_image)
        run = min(count - offset, per_image - row)
        yield offset, (image, row, run)
        offset += run


def _block_sizes(total: int, size: int) -> list[tuple[int, int]]:
    """``(block size, how many)`` of :func:`_blocks`' blocks, larger first: at most two kinds."""
    count = -(-total // size)
    small, larger = divmod(total, count)
    return [(small + 1, larger)] * (larger > 0) + [(small, count - larger)] * (count > larger)


_STORE_SETUP = 14  # a STORE's cycles besides its memory reads and rows: its pipeline
# Cycles a STORE leaves the memory port idle where memory bounds a block: its parameter and first addend reads'
# latency, and its wait for the array's last results. Fitted to RTL cycles of ResNet-50's, DenseNet-121's and
# depthwise layers' tilings (those of 14 to 250 cycles tried; 100 lost the least against each layer's best).
_STORE_GAP = 100


def _weight_loading_blocks(chunks_per_block: int, blocks: int) -> int:
    """How many of an N block's first ``blocks`` M blocks load their weight tiles: with at most two chunks per
    block the halves of the weight buffer keep them for the N block's later M blocks."""
    return blocks if chunks_per_block > 2 else min(blocks, 2 if chunks_per_block == 1 else 1)


def estimate_gemm(config: HardwareConfig, m: int, k: int, n: int, tiling: GemmTiling, *,
                  bytes_per_cycle: float = 32.0, latency: int = 40, adds: bool = False) -> tuple[float, float]:
    """Estimated cycles and bytes moved of an ``m x k x n`` product cut as ``tiling``: loads double-buffered
    against compute, each block's STOREs against the next block, and the first chunk's loads and the last block's
    STOREs alone (a program starts and ends drained). Weight tiles that a half of the weight buffer still holds are
    not loaded again (:func:`_weight_loading_blocks`).

    ``bytes_per_cycle`` and ``latency`` describe the memory the program will run against (loads and stores share
    it); ``adds``: the STOREs read an addend row per row.
    """
    R, C = config.rows, config.cols
    k_tiles, n_tiles = -(-k // R), -(-n // C)
    m_block, n_block, k_chunk = tiling.m_block, tiling.n_block, tiling.k_chunk
    min_stream = R + 4  # shorter streams wait for the next weight tile (two shadow banks, docs/isa.md)
    # A STORE reads its parameter (and add) block and, adding, its first addend rows before its rows stream.
    store_start = latency * (1 + adds) + 12 * C / bytes_per_cycle + _STORE_SETUP

    def fetch(rows: int, tiles_k: int, tiles_n: int, weights: bool = True) -> tuple[float, int]:
        """Cycles and bytes of a chunk's LOADs: one per K tile (one for a single row) and, with ``weights``, one
        per N tile, each paying the latency."""
        tiles_n *= weights
        loaded = rows * tiles_k * R + tiles_n * tiles_k * R * C
        return loaded / bytes_per_cycle + ((tiles_k if rows > 1 else 1) + tiles_n) * latency, loaded

    def store(rows: int, tiles_n: int) -> tuple[float, int]:
        stored = rows * tiles_n * C * (1 + adds)
        return tiles_n * store_start + stored / bytes_per_cycle, stored

    def block_cost(rows: int, tiles_n: int, weights: bool) -> tuple[float, float]:
        block = loaded = 0.0
        for tiles_k, chunks in _block_sizes(k_tiles, k_chunk):
            compute = tiles_k * tiles_n * max(rows, min_stream)
            cycles_in, chunk = fetch(rows, tiles_k, tiles_n, weights)
            block += chunks * max(compute, cycles_in)
            loaded += chunks * chunk
        cycles_out, stored = store(rows, tiles_n)
        return max(block, cycles_out, (loaded + stored) / bytes_per_cycle + tiles_n * _STORE_GAP), loaded + stored

    per_block = -(-k_tiles // k_chunk)
    cycles = traffic = 0.0
    for tiles_n, blocks_n in _block_sizes(n_tiles, n_block):
        index = 0
        for rows, blocks_m in _block_sizes(m, m_block):
            loading = _weight_loading_blocks(per_block, index + blocks_m) - _weight_loading_blocks(per_block, index)
            for weights, count in ((True, loading), (False, blocks_m - loading)):
                block, moved = block_cost(rows, tiles_n, weights)
                cycles += blocks_n * count * block
                traffic += blocks_n * count * moved
            index += blocks_m
    first = fetch(min(m, m_block), min(k_tiles, k_chunk), min(n_tiles, n_block))[0]
    return first + store(min(m, m_block), min(n_tiles, n_block))[0] + cycles, traffic


def plan_gemm(config: HardwareConfig, m: int, k: int, n: int, *, bytes_per_cycle: float = 32.0,
              latency: int = 40, adds: bool = False) -> GemmTiling:
    """The tiling that fits the buffers with the fewest cycles by :func:`estimate_gemm`, each byte moved counting
    a twentieth of its memory cycle on top: the estimate takes the slower of compute and memory, and where they are
    close their contention costs more than it says (measured on ResNet-50's layers)."""
    R, C = config.rows, config.cols
    k_tiles, n_tiles = -(-k // R), -(-n // C)
    act_half, acc_half = config.act_depth // 2, config.acc_depth // 2
    wgt_half_tiles = config.wgt_depth // 2 // R
    candidates = sorted({min(m, acc_half, act_half)} | {b for b in (2 ** i for i in range(4, 17))
                                                         if b < m and b <= min(acc_half, act_half)})
    tilings = [GemmTiling(m_block, n_block, k_chunk)
               for m_block in candidates for n_block in range(1, min(n_tiles, wgt_half_tiles, acc_half // m_block) + 1)
               for most in [min(k_tiles, act_half // m_block, wgt_half_tiles // n_block)]
               for k_chunk in sorted({most} | {c for c in (2 ** i for i in range(8)) if c < most})]
    if not tilings:
        raise GemmError(f"no tiling fits the buffers of {config.describe()}")

    def cost(tiling: GemmTiling) -> float:
        cycles, traffic = estimate_gemm(config, m, k, n, tiling, bytes_per_cycle=bytes_per_cycle, latency=latency,
                                        adds=adds)
        return cycles + 0.05 * traffic / bytes_per_cycle

    return min(tilings, key=cost)


class GemmProgram:
    """A quantized matrix product laid out in memory with the program that computes it.

    Operands are stored as plain row-major matrices, padded to whole tiles:
    activations ``[M][Kp]`` (padded with the zero point), weights ``[Kp][Np]``,
    outputs ``[M][Np]`` (int32 when raw). LOAD and STORE strides walk their
    rows, so the host writes activations and reads results without reshuffling
    them. Activations given as a :class:`ConvolutionInput` are stored as its padded tensor instead and read by
    window LOADs (weights' K rows placed to match). After an executor has run :attr:`program`, :meth:`result` reads the
    ``M x N`` output back. An output ``table`` (256 bytes) is applied to each requantized byte by the STOREs
    (``lookup``), so an elementwise activation comes with the product. A ``residual`` add (its ``addend_offset``
    is set here) adds the uint8 ``addend`` [M, N], stored like the outputs, to each requantized row before the
    lookup (the STOREs' ``add``). With ``maximum`` the K tiles' products are not summed: each output keeps the
    largest (COMPUTE's ``maximum``, for max pooling). ``memory_bytes_per_cycle`` (default: one beat per cycle) tunes
    the tiling to the memory the program will run against.
    """

    def __init__(self, config: HardwareConfig, a: np.ndarray | ConvolutionInput, w: np.ndarray, *,
                 act_zero_point: int = 0, requant: Requantization | None = None, tiling: GemmTiling | None = None,
                 memory_bytes_per_cycle: float | None = None, table: np.ndarray | None = None,
                 addend: np.ndarray | None = None, residual: ResidualAdd | None = None, maximum: bool = False):
        self.config, self.maximum = config, maximum
        self.conv = a if isinstance(a, ConvolutionInput) else None
        if self.conv is None:
            a = np.asarray(a)
        else:
            a.check()
        w = np.asarray(w)
        if len(a.shape) != 2 or w.ndim != 2:
            raise GemmError(f"expected 2-D operands, got activations {a.shape} and weights {w.shape}")
        if a.shape[1] != w.shape[0]:
            raise GemmError(f"activations {a.shape} and weights {w.shape} disagree on K")
        if a.dtype not in (np.uint8, np.int8):
            raise GemmError(f"activations must be uint8 or int8, not {a.dtype}")
        if w.dtype != np.int8:
            raise GemmError(f"weights must be int8, not {w.dtype}")
        if 0 in a.shape or 0 in w.shape:
            raise GemmError(f"empty operands: activations {a.shape}, weights {w.shape}")
        self.act_signed = a.dtype == np.int8
        low, high = (-128, 127) if self.act_signed else (0, 255)
        if not low <= act_zero_point <= high:
            raise GemmError(f"activation zero point {act_zero_point} is outside {low}..{high} for {a.dtype}")
        self.m, self.k = a.shape
        self.n = w.shape[1]
        self.k_pad = self._padded_k()
        if requant is not None and requant.channels != self.n:
            raise GemmError(f"requantization has {requant.channels} channels; the product has {self.n}")
        self.act_zero_point, self.requant = act_zero_point, requant
        self.table = None if table is None else np.asarray(table, dtype=np.uint8).reshape(-1)
        if self.table is not None and (requant is None or self.table.size != TABLE_BYTES):
            raise GemmError(f"an output table needs requantized outputs and {TABLE_BYTES} entries")
        self.residual = residual
        if residual is not None and (requant is None or requant.clamp_min < 0 or addend is None
                                     or np.shape(addend) != (self.m, self.n) or np.asarray(addend).dtype != np.uint8):
            raise GemmError(f"a residual add needs uint8 requantized outputs and a uint8 addend of shape "
                            f"{(self.m, self.n)}")
        self._check_memory_size()
        self.tiling = tiling or plan_gemm(config, self.m, self.k_pad, self.n,
                                          bytes_per_cycle=memory_bytes_per_cycle or config.mem_bytes,
                                          adds=residual is not None)
        self._check_tiling()
        self.program = self._build(a, w, addend)

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n

    def _check_memory_size(self):
        cfg = self.config
        k_tiles, n_tiles = self.k_pad // cfg.rows, -(-self.n // cfg.cols)
        out_row = cfg.cols * (4 if self.requant is None else 1)
        needed = (self._activation_bytes() + n_tiles * k_tiles * cfg.rows * cfg.cols
                  + n_tiles * self.m * out_row * (1 if self.residual is None else 2)
                  + n_tiles * (cfg.param_block_bytes + ADD_BLOCK_BYTES))
        if needed >= ADDRESS_SPACE:
            raise GemmError(f"this product needs {needed} bytes of external memory; the memory port "
                            f"addresses {ADDRESS_SPACE} bytes")

    def _check_tiling(self):
        cfg, t = self.config, self.tiling
        if t.m_block * t.k_chunk > cfg.act_depth // 2:
            raise GemmError(f"{t.m_block} rows x {t.k_chunk} tiles overflow half the activation buffer")
        if t.n_block * t.k_chunk * cfg.rows > cfg.wgt_depth // 2:
            raise GemmError(f"{t.n_block} x {t.k_chunk} weight tiles overflow half the weight buffer")
        if t.m_block * t.n_block > cfg.acc_depth // 2:
            raise GemmError(f"{t.m_block} rows x {t.n_block} tiles overflow half the accumulator buffer")

    def _build(self, a: np.ndarray, w: np.ndarray, addend: np.ndarray | None) -> Program:
        cfg, R, C = self.config, self.config.rows, self.config.cols
        m, n = self.m, self.n
        k_tiles, n_tiles = self.k_pad // R, -(-n // C)
        self.n_tiles = n_tiles
        raw = self.requant is None
        out_row = 4 * C if raw else C

        memory = MemoryImage()
        k_pad, n_pad = k_tiles * R, n_tiles * C
        a_base = self._a_base = memory.place(self._padded_activations(a))
        w_pad = np.zeros((k_pad, n_pad), dtype=np.int8)
        w_pad[self._weight_rows(), :n] = w
        w_base = memory.place(w_pad)
        block_bytes = cfg.param_block_bytes + (0 if self.residual is None else ADD_BLOCK_BYTES)
        p_base = memory.allocate(n_tiles * block_bytes)
        table = {} if self.table is None else dict(table_addr=memory.place(self.table), lookup=True)
        if not raw:
            rq = self.requant
            for nt in range(n_tiles):
                cols = slice(nt * C, min(n, (nt + 1) * C))
                memory.data[p_base + nt * block_bytes:][:cfg.param_block_bytes] = requantization_block(
                    cfg, rq.bias[cols], rq.multiplier[cols], rq.shift[cols])
        out_pitch = n_tiles * out_row  # bytes per output row
        self._out_bytes = m * out_pitch
        self.out_base = memory.allocate(self._out_bytes)
        added = {}
        if self.residual is not None:
            self._addend_base = memory.allocate(self._out_bytes)
            self._addend_region(memory.data)[...] = addend
            block = dataclasses.replace(self.residual, addend_offset=self._addend_base - self.out_base).block()
            self._add_blocks = [p_base + nt * block_bytes + cfg.param_block_bytes for nt in range(n_tiles)]
            for address in self._add_blocks:
                memory.data[address:address + ADD_BLOCK_BYTES] = block
            added = dict(add=True)

        t = self.tiling
        act_half, acc_half, wgt_half = cfg.act_depth // 2, cfg.acc_depth // 2, cfg.wgt_depth // 2
        # N blocks outermost: an N block's M blocks use the same weight tiles, which the halves of the weight
        # buffer keep (a chunk's weights are loaded only where its half holds others).
        blocks = [(m0, rows, nt0, tiles_n) for nt0, tiles_n in _blocks(n_tiles, t.n_block)
                  for m0, rows in _blocks(m, t.m_block)]
        chunks = [(b, kt0, tiles_k) for b in range(len(blocks)) for kt0, tiles_k in _blocks(k_tiles, t.k_chunk)]

        program = InstructionColumns()
        held = [None, None]  # the weight tiles each half of the weight buffer holds

        def loads(c: int) -> None:
            b, kt0, tiles_k = chunks[c]
            m0, rows, nt0, tiles_n = blocks[b]
            act_base, wgt_base = (c % 2) * act_half, (c % 2) * wgt_half
            j, i = np.arange(tiles_k), np.arange(tiles_n)
            reuse = held[c % 2] == (kt0, tiles_k, nt0, tiles_n)
            held[c % 2] = (kt0, tiles_k, nt0, tiles_n)
            signal = {"signal_compute": True} if reuse else {}
            if self.conv is None and rows == 1:  # one row's K tiles lie side by side: one LOAD
                program.add(Opcode.LOAD, 1, buffer=Buffer.ACT, sram_addr=act_base, count=tiles_k,
                            dram_addr=a_base + m0 * k_pad + kt0 * R, dram_stride=R, wait_compute=c >= 2, **signal)
            elif self.conv is None:
                program.add(Opcode.LOAD, tiles_k, buffer=Buffer.ACT, sram_addr=act_base + j * rows, count=rows,
                            dram_addr=a_base + m0 * k_pad + (kt0 + j) * R, dram_stride=k_pad,
                            first={"wait_compute": c >= 2}, last=signal)
            else:
                self._window_loads(program, a_base, m0, rows, self._activation_tiles(kt0 + j, nt0),
                                   act_base + j * rows, c >= 2, signal)
            if not reuse:
                program.add(Opcode.LOAD, tiles_n, buffer=Buffer.WGT, sram_addr=wgt_base + i * tiles_k * R,
                            count=tiles_k * R, dram_addr=w_base + kt0 * R * n_pad + (nt0 + i) * C,
                            dram_stride=n_pad, last={"signal_compute": True})

        def computes(c: int) -> None:
            b, kt0, tiles_k = chunks[c]
            m0, rows, nt0, tiles_n = blocks[b]
            act_base, wgt_base, acc_base = (c % 2) * act_half, (c % 2) * wgt_half, (b % 2) * acc_half
            j, i = np.repeat(np.arange(tiles_k), tiles_n), np.tile(np.arange(tiles_n), tiles_k)  # j outer, i inner
            program.add(Opcode.COMPUTE, tiles_k * tiles_n, act_addr=act_base + j * rows, count=rows,
                        acc_addr=acc_base + i * rows, wgt_addr=wgt_base + (i * tiles_k + j) * R, preload=True,
                        accumulate=kt0 + j > 0, maximum=self.maximum, act_signed=self.act_signed,
                        act_zero_point=self.act_zero_point,
                        first={"wait_load": True, "wait_store": kt0 == 0 and b >= 2},
                        last={"signal_load": c + 2 < len(chunks), "signal_store": kt0 + tiles_k == k_tiles})

        def stores(b: int) -> None:
            m0, rows, nt0, tiles_n = blocks[b]
            nt = nt0 + np.arange(tiles_n)
            quantized = {} if raw else dict(param_addr=p_base + nt * block_bytes, load_params=True, **added,
                                            out_zero_point=self.requant.out_zero_point,
                                            float32_scale=self.requant.float32_scale)
            low, high = (-128, 127) if raw else (self.requant.clamp_min, self.requant.clamp_max)
            program.add(Opcode.STORE, tiles_n, acc_addr=(b % 2) * acc_half + (nt - nt0) * rows, count=rows,
                        dram_addr=self.out_base + m0 * out_pitch + nt * out_row, dram_stride=out_pitch, raw=raw,
                        clamp_min=low, clamp_max=high, **quantized, **table,
                        first={"wait_compute": True, "load_table": bool(table) and b == 0},
                        last={"signal_compute": b + 2 < len(blocks)})

        loads(0)
        for c, (b, kt0, tiles_k) in enumerate(chunks):
            if c + 1 < len(chunks):
                loads(c + 1)
            computes(c)
            if kt0 + tiles_k == k_tiles:
                stores(b)
        program.add(Opcode.FINISH, 1)
        placed = Program.place_words(memory, program.encode(), macs=self.macs)
        memory.trim()
        return placed

    def _window_loads(self, program: InstructionColumns, a_base: int, m0: int, rows: int, k_tiles: np.ndarray,
                      sram_addr: np.ndarray, wait_compute: bool, last: dict) -> None:
        """Window LOADs of rows ``m0 .. m0 + rows - 1`` for K tiles ``k_tiles`` into ``sram_addr``: one per tile
        and image the rows cross (image by image, tile by tile within an image); the last one also carries the
        fields ``last``."""
        conv = self.conv
        ho, wo = conv.out_size
        (sh, sw), fields = conv.strides, self._window_fields(k_tiles)
        offset, image_bytes = fields.pop("dram_addr"), fields["in_h"] * fields["row_stride"]
        first = {"wait_compute": wait_compute}
        runs = list(_image_runs(m0, rows, ho * wo))
        for run, (placed, (image, pixel, count)) in enumerate(runs):
            start_y, start_x = divmod(pixel, wo)
            program.add(Opcode.LOAD, k_tiles.size, buffer=Buffer.ACT, window=True, sram_addr=sram_addr + placed,
                        count=count, dram_addr=a_base + image * image_bytes + offset, out_w=wo, start_y=start_y,
                        start_x=start_x, stride_y=sh, stride_x=sw, fill=self.act_zero_point & 0xFF, first=first,
                        last=last if run == len(runs) - 1 else {}, **fields)
            first = {}

    def _window_fields(self, k_tiles: np.ndarray) -> dict:
        """The window LOAD fields of K tiles ``k_tiles`` that do not depend on the output pixels: the stored
        tensor's addressing (``dram_addr`` from its image's first byte) and each tile's tap offsets. A tile is
        ``rows`` channels of one tap."""
        conv, R = self.conv, self.config.rows
        _, h, w, _ = conv.x.shape
        kw, (dh, dw) = conv.kernel[1], conv.dilations
        channels = conv.padded_channels(R)
        tap, part = np.divmod(k_tiles, channels // R)
        ty, tx = np.divmod(tap, kw)
        return dict(dram_addr=part * R, dram_stride=channels, row_stride=w * channels, in_h=h, in_w=w,
                    offset_y=ty * dh - conv.pads[0], offset_x=tx * dw - conv.pads[1])

    def _padded_k(self) -> int:
        """K as the program stores it: padded to whole ``rows``-wide tiles, or each tap's channels padded."""
        R = self.config.rows
        return -(-self.k // R) * R if self.conv is None else (
            self.conv.kernel[0] * self.conv.kernel[1] * self.conv.padded_channels(R))

    def _activation_tiles(self, k_tiles: np.ndarray, n_tile: int) -> np.ndarray:
        """The K tiles of the activation tensor that the product's K tiles ``k_tiles`` read for column tile ``n_tile``:
        the same ones (a depthwise program's column tiles read their own channels)."""
        return k_tiles

    def _weight_rows(self) -> np.ndarray:
        """Where each of the weights' K rows lies in the padded K: in order, or each tap's channels padded."""
        if self.conv is None:
            return np.arange(self.k)
        taps, channels = self.conv.kernel[0] * self.conv.kernel[1], self.conv.x.shape[3]
        return (np.arange(taps)[:, None] * self.conv.padded_channels(self.config.rows) + np.arange(channels)).ravel()

    def _activation_bytes(self) -> int:
        """The bytes the activations take in the program's memory."""
        return self.m * self.k_pad if self.conv is None else (
            self.conv.x[..., :1].size * self.conv.padded_channels(self.config.rows))

    def _activation_region(self) -> np.ndarray:
        """The activations in the program's memory: ``[M][Kp]``, or the tensor ``[N][H][W][Cp]``."""
        region = self.program.memory.data[self._a_base:self._a_base + self._activation_bytes()]
        return region.reshape(self.m, self.k_pad) if self.conv is None else region.reshape(
            *self.conv.x.shape[:3], -1)

    def _padded_activations(self, a: np.ndarray | ConvolutionInput) -> np.ndarray:
        """``a`` padded with the zero point to whole ``rows``-wide tiles: ``[M][Kp]``; a convolution's tensor with
        its channels padded to a multiple of ``rows``."""
        values = a if self.conv is None else a.x
        width = self.k_pad if self.conv is None else self.conv.padded_channels(self.config.rows)
        if values.shape[-1] == width:
            return values
        padded = np.full((*values.shape[:-1], width), self.act_zero_point, dtype=values.dtype)
        padded[..., :values.shape[-1]] = values
        return padded

    def load_activations(self, a: np.ndarray | ConvolutionInput) -> None:
        """New activations of the same shape and type (for a convolution: a :class:`ConvolutionInput` of the same
        geometry), so that the program can run again; clears the outputs."""
        dtype = np.int8 if self.act_signed else np.uint8
        if self.conv is None:
            a = np.asarray(a)
            if a.shape != (self.m, self.k) or a.dtype != dtype:
                raise GemmError(f"expected {dtype.__name__} activations of shape {(self.m, self.k)}, "
                                f"got {a.dtype} {a.shape}")
            values = a
        else:
            if not isinstance(a, ConvolutionInput) or a.x.shape != self.conv.x.shape or a.x.dtype != dtype or (
                    a.kernel, a.strides, a.pads, a.dilations) != (self.conv.kernel, self.conv.strides, self.conv.pads,
                                                                  self.conv.dilations):
                raise GemmError(f"expected a convolution input like the program's: {dtype.__name__} "
                                f"{self.conv.x.shape}, kernel {self.conv.kernel}, strides {self.conv.strides}, "
                                f"pads {self.conv.pads}, dilations {self.conv.dilations}")
            values = a.x
        target = self._activation_region()
        target.view(dtype)[..., :values.shape[-1]] = values  # the padding keeps the zero point
        self.program.memory.data[self.out_base:self.out_base + self._out_bytes] = 0

    def _addend_region(self, data: np.ndarray) -> np.ndarray:
        """The addend ``[M, N]`` in the program's memory ``data`` (rows laid out like the outputs')."""
        region = data[self._addend_base:self._addend_base + self._out_bytes]
        return region.reshape(self.m, -1)[:, :self.n]

    def load_addend(self, addend: np.ndarray) -> None:
        """A new uint8 addend ``[M, N]`` for a program with a residual add, so that it can run again."""
        addend = np.asarray(addend)
        if self.residual is None or addend.shape != (self.m, self.n) or addend.dtype != np.uint8:
            raise GemmError(f"expected a uint8 addend of shape {(self.m, self.n)} for a program with a residual add")
        self._addend_region(self.program.memory.data)[...] = addend

    def result(self, *, copy: bool = True) -> np.ndarray:
        """The ``M x N`` output the program wrote: int32 when raw, else int8/uint8. With ``copy=False``, a view
        of the program's memory, valid until the program runs again."""
        m, n = self.m, self.n
        dtype = np.dtype("<i4") if self.requant is None else self.requant.output_dtype
        outputs = self.program.memory.data[self.out_base:self.out_base + self._out_bytes].view(dtype)
        view = outputs.reshape(m, -1)[:, :n]
        return view.copy() if copy else view
