"""Shared pieces of the cocotb unit benches.

Build side (called from pytest): :func:`run_bench` turns a bench module's
Amaranth component into Verilog and builds and runs it with cocotb's Python
runner and Verilator. Bench side (imported inside the simulator): clock and
reset, packing of flattened array ports, and a model of a memory read port.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import random
from collections import deque
from pathlib import Path
from unittest import mock

from amaranth.lib.data import StructLayout
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from mvu.hdl.interfaces import READ_REQUEST

__all__ = ["run_bench", "start", "drive_rows", "pack", "unpack", "pack_fields", "field", "ReadMemory"]


def run_bench(name: str) -> None:
    """Build ``mvu.sim.benches.<name>`` (its ``component()``) with Verilator and run its cocotb tests.

    The Verilog and the Verilator build live in ``cache_dir()/cocotb/<name>-<installation>``: the
    generated Makefiles name cocotb's files by absolute path, so each Python environment gets its own.
    Raises ``AssertionError`` unless at least one test ran and none failed.
    """
    from cocotb_tools.runner import get_results, get_runner

    from mvu.hdl.toolchain import cache_dir
    from mvu.hdl.verilog import component_verilog
    from mvu.sim.toolchain import tool_environment

    module = f"mvu.sim.benches.{name}"
    toplevel = name.removeprefix("bench_")
    import cocotb

    installation = hashlib.sha256(str(Path(cocotb.__file__).resolve()).encode()).hexdigest()[:8]
    build_dir = cache_dir() / "cocotb" / f"{name}-{installation}"
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / f"{toplevel}.v"
    with mock.patch.dict(os.environ, tool_environment()):
        text = component_verilog(importlib.import_module(module).component(), toplevel)
        if not source.is_file() or source.read_text() != text:  # an unchanged file keeps make's timestamps
            source.write_text(text)
        runner = get_runner("verilator")
        runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=build_dir,
                     build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style"])
        results = runner.test(test_module=module, hdl_toplevel=toplevel, build_dir=build_dir)
    tests, failed = get_results(results)
    assert tests > 0 and failed == 0, f"{name}: {failed} of {tests} cocotb tests failed"


async def start(dut, **inputs: int) -> None:
    """Start a 10 ns clock on ``dut.clk`` and hold ``dut.rst`` for two cycles.

    ``inputs`` (port name to value) are applied first, so that nothing left
    over from an earlier test reaches the block after the reset.
    """
    Clock(dut.clk, 10, unit="ns").start()
    for name, value in inputs.items():
        getattr(dut, name).value = value
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0


def pack(values, bits: int) -> int:
    """Flatten ``values`` into one vector, element ``i`` at bits ``[bits*i + bits-1 : bits*i]``."""
    mask = (1 << bits) - 1
    return sum((int(v) & mask) << (bits * i) for i, v in enumerate(values))


def unpack(vector: int, bits: int, count: int, signed: bool = False) -> list[int]:
    """The inverse of :func:`pack`; ``signed`` reads two's complement elements."""
    mask, sign = (1 << bits) - 1, 1 << (bits - 1)
    values = [(vector >> (bits * i)) & mask for i in range(count)]
    return [v - (v & sign) * 2 for v in values] if signed else values


async def drive_rows(dut, drive: list[dict], expect: list, latency: int, lanes: int) -> int:
    """Apply ``drive[t]`` (port name to value) at cycle ``t`` and check that a fixed-latency block's output
    ``latency`` cycles later is ``expect[t]``: ``out_valid`` low for ``None``, else ``out_data`` holding those
    ``lanes`` bytes. Returns how many rows came out."""
    rows = 0
    for t, inputs in enumerate(drive):
        await RisingEdge(dut.clk)
        for name, value in inputs.items():
            getattr(dut, name).value = value
        await ReadOnly()
        if t < latency:
            continue
        row = expect[t - latency]
        assert int(dut.out_valid.value) == (row is not None), f"cycle {t}: out_valid"
        if row is not None:
            got = unpack(int(dut.out_data.value), 8, lanes)
            assert got == row, f"cycle {t}: out_data {got}, expected {row}"
            rows += 1
    return rows


def pack_fields(layout: StructLayout, **values: int) -> int:
    """A struct payload of ``layout`` holding ``values`` (field name to value, two's complement if negative)."""
    return sum((int(value) & ((1 << layout[name].width) - 1)) << layout[name].offset for name, value in values.items())


def field(vector: int, layout: StructLayout, *names: str) -> tuple[int, ...]:
    """The fields ``names`` of ``layout`` in ``vector``, unsigned."""
    return tuple((vector >> layout[name].offset) & ((1 << layout[name].width) - 1) for name in names)


class ReadMemory:
    """A memory answering a block's :class:`~mvu.hdl.interfaces.MemoryReader` port ``mem``.

    Requests (byte address, length in beats) are accepted with random
    backpressure and answered in order, lowest bytes first, after a random
    latency and with random gaps between beats. Bytes past ``data`` read as 0.
    Call :meth:`drive` after each rising edge and :meth:`sample` in the
    read-only phase of the same cycle; :attr:`requests` lists what was asked.
    """

    def __init__(self, dut, data: bytes, beat_bytes: int, rng: random.Random,
                 ready_chance: float = 0.7, latency: tuple[int, int] = (1, 6), gap_chance: float = 0.3):
        self.dut, self.data, self.beat_bytes, self.rng = dut, data, beat_bytes, rng
        self.ready_chance, self.latency, self.gap_chance = ready_chance, latency, gap_chance
        self.requests: list[tuple[int, int]] = []
        self.beats: deque[tuple[int, int]] = deque()  # (earliest cycle, data)

    @property
    def pending(self) -> bool:
        """Whether accepted requests still have beats to answer."""
        return bool(self.beats)

    def drive(self, cycle: int) -> None:
        dut, rng = self.dut, self.rng
        dut.mem_req_ready.value = rng.random() < self.ready_chance
        send = bool(self.beats) and self.beats[0][0] <= cycle and rng.random() >= self.gap_chance
        dut.mem_resp_valid.value = send
        dut.mem_resp_payload.value = self.beats.popleft()[1] if send else rng.getrandbits(8 * self.beat_bytes)

    def sample(self, cycle: int) -> None:
        dut = self.dut
        if not (int(dut.mem_req_valid.value) and int(dut.mem_req_ready.value)):
            return
        addr, beats = field(int(dut.mem_req_payload.value), READ_REQUEST, "addr", "len")
        self.requests.append((addr, beats))
        first = cycle + self.rng.randint(*self.latency)
        for k in range(beats):
            start = addr + k * self.beat_bytes
            chunk = self.data[start:start + self.beat_bytes].ljust(self.beat_bytes, b"\0")
            self.beats.append((first + k, int.from_bytes(chunk, "little")))
