"""Quantized matrix products of any size, tiled into programs for the matrix-vector unit.

``C[M, N] = requantize((A[M, K] - act_zero_point) @ W[K, N])`` with int8 or
uint8 activations, int8 weights and per-output-channel requantization (or
raw int32 accumulators).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import TABLE_BYTES, Buffer, Opcode
from mvu.hdl.contract.program import InstructionColumns, MemoryImage, Program
from mvu.hdl.contract.requantization import Requantization, requantization_block
from mvu.host.executors.intmatmul import as_unsigned, centred_matmul
from mvu.host.executors.requantize import requantize_rows

__all__ = ["golden_gemm", "GemmTiling", "plan_gemm", "GemmProgram", "GemmError"]

_ADDRESS_SPACE = 1 << 32


class GemmError(ValueError):
    """A matrix product that cannot be expressed as a program for this hardware."""


def golden_gemm(a: np.ndarray, w: np.ndarray, act_zero_point: int = 0,
                requant: Requantization | None = None, table: np.ndarray | None = None) -> np.ndarray:
    """The plain definition, with no tiling: int32 accumulators, or requantized bytes (each looked up in the
    256-byte ``table`` if given) viewed as the output type."""
    acc = centred_matmul(*as_unsigned(np.asarray(a), act_zero_point), w)
    if requant is None:
        return acc
    out = requantize_rows(acc, requant.bias, requant.multiplier, requant.shift, requant.out_zero_point,
                          requant.clamp_min, requant.clamp_max, float32_scale=requant.float32_scale)
    if table is not None:
        out = np.asarray(table, dtype=np.uint8)[out]
    return out.view(requant.output_dtype)


@dataclass(frozen=True)
class GemmTiling:
    """How a product is cut up: rows per block, weight tiles per block and per chunk."""

    m_block: int
    n_block: int   # column tiles of `cols` per block
    k_chunk: int   # reduction tiles of `rows` loaded at once


def _blocks(total: int, size: int):
    for start in range(0, total, size):
        yield start, min(size, total - start)


def _block_sizes(total: int, size: int) -> list[tuple[int, int]]:
    """``(block size, how many)`` for cutting ``total`` into blocks of ``size``: at most two kinds."""
    full, rest = divmod(total, size)
    return [(size, full)] * (full > 0) + [(rest, 1)] * (rest > 0)


def plan_gemm(config: HardwareConfig, m: int, k: int, n: int, *, bytes_per_cycle: float = 32.0,
              latency: int = 40) -> GemmTiling:
    """Choose the tiling with the fewest estimated cycles, loads double-buffered against compute.

    ``bytes_per_cycle`` and ``latency`` describe the memory the program will
    run against; among equally fast tilings the one that moves fewer bytes wins.
    """
    R, C = config.rows, config.cols
    k_tiles, n_tiles = -(-k // R), -(-n // C)
    act_half, acc_half = config.act_depth // 2, config.acc_depth // 2
    wgt_half_tiles = config.wgt_depth // 2 // R
    min_stream = 2 * R + 4  # shorter streams wait for the next weight tile
    candidates = sorted({min(m, acc_half, act_half)} | {b for b in (2 ** i for i in range(4, 17))
                                                         if b < m and b <= min(acc_half, act_half)})
    best, best_cycles = None, math.inf
    for m_block in candidates:
        for n_block in range(1, min(n_tiles, wgt_half_tiles, acc_half // m_block) + 1):
            k_chunk = min(k_tiles, act_half // m_block, wgt_half_tiles // n_block)
            if k_chunk < 1:
                continue
            cycles = traffic = 0.0
            for rows, blocks_m in _block_sizes(m, m_block):
                for tiles_n, blocks_n in _block_sizes(n_tiles, n_block):
                    for tiles_k, chunks in _block_sizes(k_tiles, k_chunk):
                        compute = tiles_k * tiles_n * max(rows, min_stream)
                        loaded = rows * tiles_k * R + tiles_n * tiles_k * R * C
                        cycles += blocks_m * blocks_n * chunks * max(compute, loaded / bytes_per_cycle + latency)
                        traffic += blocks_m * blocks_n * chunks * loaded
            cycles += 1e-3 * traffic / bytes_per_cycle
            if cycles < best_cycles:
                best, best_cycles = GemmTiling(m_block, n_block, k_chunk), cycles
    if best is None:
        raise GemmError(f"no tiling fits the buffers of {config.describe()}")
    return best


class GemmProgram:
    """A quantized matrix product laid out in memory with the program that computes it.

    Operands are stored as plain row-major matrices, padded to whole tiles:
    activations ``[M][Kp]`` (padded with the zero point), weights ``[Kp][Np]``,
    outputs ``[M][Np]`` (int32 when raw). LOAD and STORE strides walk their
    rows, so the host writes activations and reads results without reshuffling
    them. After an executor has run :attr:`program`, :meth:`result` reads the
    ``M x N`` output back. An output ``table`` (256 bytes) is applied to each requantized byte by the STOREs
    (``lookup``), so an elementwise activation comes with the product. ``memory_bytes_per_cycle`` (default: one beat per
    cycle) tunes the tiling to the memory the program will run against.
    """

    def __init__(self, config: HardwareConfig, a: np.ndarray, w: np.ndarray, *, act_zero_point: int = 0,
                 requant: Requantization | None = None, tiling: GemmTiling | None = None,
                 memory_bytes_per_cycle: float | None = None, table: np.ndarray | None = None):
        self.config = config
        a, w = np.asarray(a), np.asarray(w)
        if a.ndim != 2 or w.ndim != 2:
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
        if requant is not None and requant.channels != self.n:
            raise GemmError(f"requantization has {requant.channels} channels; the product has {self.n}")
        self.act_zero_point, self.requant = act_zero_point, requant
        self.table = None if table is None else np.asarray(table, dtype=np.uint8).reshape(-1)
        if self.table is not None and (requant is None or self.table.size != TABLE_BYTES):
            raise GemmError(f"an output table needs requantized outputs and {TABLE_BYTES} entries")
        self._check_memory_size()
        self.tiling = tiling or plan_gemm(config, self.m, self.k, self.n,
                                          bytes_per_cycle=memory_bytes_per_cycle or config.mem_bytes)
        self._check_tiling()
        self.program = self._build(a, w)

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n

    def _check_memory_size(self):
        cfg = self.config
        k_tiles, n_tiles = -(-self.k // cfg.rows), -(-self.n // cfg.cols)
        out_row = cfg.cols * (4 if self.requant is None else 1)
        needed = (k_tiles * self.m * cfg.rows + n_tiles * k_tiles * cfg.rows * cfg.cols
                  + n_tiles * self.m * out_row + n_tiles * cfg.param_block_bytes)
        if needed >= _ADDRESS_SPACE:
            raise GemmError(f"this product needs {needed} bytes of external memory; the memory port "
                            f"addresses {_ADDRESS_SPACE} bytes")

    def _check_tiling(self):
        cfg, t = self.config, self.tiling
        if t.m_block * t.k_chunk > cfg.act_depth // 2:
            raise GemmError(f"{t.m_block} rows x {t.k_chunk} tiles overflow half the activation buffer")
        if t.n_block * t.k_chunk * cfg.rows > cfg.wgt_depth // 2:
            raise GemmError(f"{t.n_block} x {t.k_chunk} weight tiles overflow half the weight buffer")
        if t.m_block * t.n_block > cfg.acc_depth // 2:
            raise GemmError(f"{t.m_block} rows x {t.n_block} tiles overflow half the accumulator buffer")

    def _build(self, a: np.ndarray, w: np.ndarray) -> Program:
        cfg, R, C = self.config, self.config.rows, self.config.cols
        m, k, n = self.m, self.k, self.n
        k_tiles, n_tiles = -(-k // R), -(-n // C)
        self.n_tiles = n_tiles
        raw = self.requant is None
        out_row = 4 * C if raw else C

        memory = MemoryImage()
        k_pad, n_pad = k_tiles * R, n_tiles * C
        a_base = self._a_base = memory.place(self._padded_activations(a))
        w_pad = np.zeros((k_pad, n_pad), dtype=np.int8)
        w_pad[:k, :n] = w
        w_base = memory.place(w_pad)
        p_base = memory.allocate(n_tiles * cfg.param_block_bytes)
        table = {} if self.table is None else dict(table_addr=memory.place(self.table), lookup=True)
        if not raw:
            rq = self.requant
            for nt in range(n_tiles):
                cols = slice(nt * C, min(n, (nt + 1) * C))
                memory.data[p_base + nt * cfg.param_block_bytes:][:cfg.param_block_bytes] = requantization_block(
                    cfg, rq.bias[cols], rq.multiplier[cols], rq.shift[cols])
        out_pitch = n_tiles * out_row  # bytes per output row
        self._out_bytes = m * out_pitch
        self.out_base = memory.allocate(self._out_bytes)

        t = self.tiling
        act_half, acc_half, wgt_half = cfg.act_depth // 2, cfg.acc_depth // 2, cfg.wgt_depth // 2
        blocks = [(m0, rows, nt0, tiles_n) for m0, rows in _blocks(m, t.m_block)
                  for nt0, tiles_n in _blocks(n_tiles, t.n_block)]
        chunks = [(b, kt0, tiles_k) for b in range(len(blocks)) for kt0, tiles_k in _blocks(k_tiles, t.k_chunk)]

        program = InstructionColumns()

        def loads(c: int) -> None:
            b, kt0, tiles_k = chunks[c]
            m0, rows, nt0, tiles_n = blocks[b]
            act_base, wgt_base = (c % 2) * act_half, (c % 2) * wgt_half
            j, i = np.arange(tiles_k), np.arange(tiles_n)
            program.add(Opcode.LOAD, tiles_k, buffer=Buffer.ACT, sram_addr=act_base + j * rows, count=rows,
                        dram_addr=a_base + m0 * k_pad + (kt0 + j) * R, dram_stride=k_pad,
                        first={"wait_compute": c >= 2})
            program.add(Opcode.LOAD, tiles_n, buffer=Buffer.WGT, sram_addr=wgt_base + i * tiles_k * R,
                        count=tiles_k * R, dram_addr=w_base + kt0 * R * n_pad + (nt0 + i) * C, dram_stride=n_pad,
                        last={"signal_compute": True})

        def computes(c: int) -> None:
            b, kt0, tiles_k = chunks[c]
            m0, rows, nt0, tiles_n = blocks[b]
            act_base, wgt_base, acc_base = (c % 2) * act_half, (c % 2) * wgt_half, (b % 2) * acc_half
            j, i = np.repeat(np.arange(tiles_k), tiles_n), np.tile(np.arange(tiles_n), tiles_k)  # j outer, i inner
            program.add(Opcode.COMPUTE, tiles_k * tiles_n, act_addr=act_base + j * rows, count=rows,
                        acc_addr=acc_base + i * rows, wgt_addr=wgt_base + (i * tiles_k + j) * R, preload=True,
                        accumulate=kt0 + j > 0, act_signed=self.act_signed, act_zero_point=self.act_zero_point,
                        first={"wait_load": True, "wait_store": kt0 == 0 and b >= 2},
                        last={"signal_load": c + 2 < len(chunks), "signal_store": kt0 + tiles_k == k_tiles})

        def stores(b: int) -> None:
            m0, rows, nt0, tiles_n = blocks[b]
            nt = nt0 + np.arange(tiles_n)
            quantized = {} if raw else dict(param_addr=p_base + nt * cfg.param_block_bytes, load_params=True,
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

    def _padded_activations(self, a: np.ndarray) -> np.ndarray:
        """``a`` padded with the zero point to whole ``rows``-wide tiles: ``[M][Kp]``."""
        k_pad = -(-self.k // self.config.rows) * self.config.rows
        if k_pad == self.k:
            return a
        padded = np.full((self.m, k_pad), self.act_zero_point, dtype=a.dtype)
        padded[:, :self.k] = a
        return padded

    def load_activations(self, a: np.ndarray) -> None:
        """New activations of the same shape and type, so that the program can run again; clears the outputs."""
        a = np.asarray(a)
        if a.shape != (self.m, self.k) or a.dtype != (np.int8 if self.act_signed else np.uint8):
            raise GemmError(f"expected {'int8' if self.act_signed else 'uint8'} activations of shape "
                            f"{(self.m, self.k)}, got {a.dtype} {a.shape}")
        k_pad = -(-self.k // self.config.rows) * self.config.rows
        target = self.program.memory.data[self._a_base:self._a_base + self.m * k_pad].reshape(self.m, k_pad)
        target.view(a.dtype)[:, :self.k] = a  # the padding columns keep the zero point
        self.program.memory.data[self.out_base:self.out_base + self._out_bytes] = 0

    def result(self, *, copy: bool = True) -> np.ndarray:
        """The ``M x N`` output the program wrote: int32 when raw, else int8/uint8. With ``copy=False``, a view
        of the program's memory, valid until the program runs again."""
        m, n = self.m, self.n
        dtype = np.dtype("<i4") if self.requant is None else self.requant.output_dtype
        outputs = self.program.memory.data[self.out_base:self.out_base + self._out_bytes].view(dtype)
        view = outputs.reshape(m, -1)[:, :n]
        return view.copy() if copy else view
