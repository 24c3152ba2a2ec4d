"""The bit-exact reference executor: the instruction set's semantics, in numpy."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .config import HardwareConfig
from .isa import Buffer, Compute, Finish, Load, Store
from .program import Program, check_program

__all__ = ["ReferenceExecutor", "requantize", "RunResult"]


@dataclass
class RunResult:
    """What an executor reports besides the memory it changed."""

    backend: str
    wall_seconds: float
    instructions: int
    counters: dict[str, int]


def _wrap_int32(values: np.ndarray) -> np.ndarray:
    return values.astype(np.int64).astype(np.int32)


def requantize(acc: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
               out_zero_point: int, clamp_min: int, clamp_max: int) -> np.ndarray:
    """The post-processing unit's arithmetic (docs/isa.md), rows x channels -> bytes."""
    x = _wrap_int32(acc.astype(np.int64) + bias.astype(np.int64)).astype(np.int64)
    product = x * multiplier.astype(np.int64)
    shift = shift.astype(np.int64)
    rounding = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    scaled = np.right_shift(product + rounding, shift)
    clamped = np.clip(scaled + out_zero_point, clamp_min, clamp_max)
    return (clamped & 0xFF).astype(np.uint8)


class ReferenceExecutor:
    """Runs programs by the book: each instruction in program order, on numpy buffers.

    The hardware overlaps its units; a correct program's dependency tokens
    make that overlap invisible, so results are identical bit for bit.
    """

    name = "reference"

    def __init__(self, config: HardwareConfig):
        self.config = config

    def run(self, program: Program) -> RunResult:
        cfg = self.config
        start = time.perf_counter()
        instructions = check_program(cfg, program.memory, program.address, program.length)
        memory = program.memory.data
        act = np.zeros((cfg.act_depth, cfg.rows), dtype=np.uint8)
        wgt = np.zeros((cfg.wgt_depth, cfg.cols), dtype=np.uint8)
        acc = np.zeros((cfg.acc_depth, cfg.cols), dtype=np.int32)
        banks = [np.zeros((cfg.rows, cfg.cols), dtype=np.float32) for _ in range(2)]
        bank = 0
        params = np.zeros((3, cfg.cols), dtype=np.int32)
        counts = {"load": 0, "compute": 0, "store": 0, "macs": 0}

        for ins in instructions:
            if isinstance(ins, Load):
                target, width = (act, cfg.rows) if ins.buffer == Buffer.ACT else (wgt, cfg.cols)
                rows = ins.dram_addr + ins.dram_stride * np.arange(ins.count)[:, None] + np.arange(width)
                target[ins.sram_addr:ins.sram_addr + ins.count] = memory[rows]
                counts["load"] += 1
            elif isinstance(ins, Compute):
                if ins.preload:
                    bank ^= 1
                    tile = wgt[ins.wgt_addr:ins.wgt_addr + cfg.rows].view(np.int8)
                    banks[bank] = tile.astype(np.float32)
                entries = act[ins.act_addr:ins.act_addr + ins.count]
                values = entries.view(np.int8) if ins.act_signed else entries
                # |products| < 2**15 and rows <= 512: every partial sum is exact in float32.
                centred = values.astype(np.float32) - np.float32(ins.act_zero_point)
                result = (centred @ banks[bank]).astype(np.int64)
                target = slice(ins.acc_addr, ins.acc_addr + ins.count)
                if ins.accumulate:
                    acc[target] = _wrap_int32(acc[target].astype(np.int64) + result)
                else:
                    acc[target] = _wrap_int32(result)
                counts["compute"] += 1
                counts["macs"] += ins.count * cfg.rows * cfg.cols
            elif isinstance(ins, Store):
                if ins.load_params:
                    raw = memory[ins.param_addr:ins.param_addr + cfg.param_block_bytes]
                    params = raw.view(np.int32).reshape(3, cfg.cols).copy()
                rows = acc[ins.acc_addr:ins.acc_addr + ins.count]
                if ins.raw:
                    out = rows.astype("<i4").view(np.uint8).reshape(ins.count, -1)
                else:
                    out = requantize(rows, params[0], params[1], params[2] & 63,
                                     ins.out_zero_point, ins.clamp_min, ins.clamp_max)
                width = out.shape[1]
                index = ins.dram_addr + ins.dram_stride * np.arange(ins.count)[:, None] + np.arange(width)
                memory[index] = out
                counts["store"] += 1
            elif isinstance(ins, Finish):
                break
        return RunResult(backend=self.name, wall_seconds=time.perf_counter() - start,
                         instructions=len(instructions), counters=counts)
