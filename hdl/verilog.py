"""Verilog of the core, from Amaranth through Yosys, for simulators and synthesis."""

from __future__ import annotations

from mvu.hdl.contract.config import HardwareConfig

__all__ = ["generate_verilog", "SIMULATION_PASSES"]


# Yosys passes between Amaranth and Verilator. They keep the design's behaviour but turn
# "register = enable ? new : old" into registers with enables and trim unused arithmetic
# width, which a cycle-based simulator evaluates far faster.
SIMULATION_PASSES = "proc; opt; wreduce; opt_clean"


def generate_verilog(config: HardwareConfig, *, optimize: bool = True) -> str:
    """Verilog of :class:`~mvu.hdl.core.MvuCore` named ``mvu_core``; ``optimize`` runs the passes above."""
    from amaranth.back import rtlil, verilog

    from mvu.hdl.core import MvuCore

    if not optimize:
        return verilog.convert(MvuCore(config), name="mvu_core", emit_src=False)
    from amaranth._toolchain.yosys import find_yosys

    text = rtlil.convert(MvuCore(config), name="mvu_core", emit_src=False)
    script = f"read_rtlil <<rtlil\n{text}\nrtlil\n{SIMULATION_PASSES}\nwrite_verilog -norename -noattr"
    return find_yosys(lambda version: version >= (0, 40)).run(["-q", "-"], script, ignore_warnings=True)
