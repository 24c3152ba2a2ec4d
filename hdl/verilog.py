"""Verilog of the core, from Amaranth through Yosys, for simulators and synthesis."""

from __future__ import annotations

from amaranth import Signal, Value
from amaranth.lib import wiring

from mvu.hdl.contract.config import HardwareConfig

__all__ = ["generate_verilog", "component_verilog", "ports", "SIMULATION_PASSES"]


# Yosys passes between Amaranth and Verilator. They keep the design's behaviour but turn
# "register = enable ? new : old" into registers with enables and trim unused arithmetic
# width, which a cycle-based simulator evaluates far faster.
SIMULATION_PASSES = "proc; opt; wreduce; opt_clean"


def ports(component: wiring.Component) -> list[tuple[str, Signal, None]]:
    """``component``'s ports as a top-level module's, each named by its path joined with ``_`` (``mem_req_valid``).

    Amaranth would join with ``__``, which Verilator's C++ names escape. Constant
    members (the ``ready`` of an ``always_ready`` stream) are left out: Amaranth
    refuses them as ports (amaranth-lang/amaranth#1574).
    """
    named = []
    for path, _, value in component.signature.flatten(component):
        value = Value.cast(value)
        if isinstance(value, Signal):
            named.append(("_".join(map(str, path)), value, None))
    return named


def component_verilog(component: wiring.Component, name: str, *, platform=None) -> str:
    """Verilog of any block as a top-level module ``name``, straight from Amaranth (elaborated for ``platform``)."""
    from amaranth.back import verilog

    return verilog.convert(component, name=name, ports=ports(component), emit_src=False, platform=platform)


class _CycleSimulator:
    """The ``platform`` of the Verilator model: idle pipelines get gated clocks (see
    :func:`mvu.hdl.pipeline.idle_gated_domain`), which no FPGA build should have."""

    gate_idle_pipelines = True


def generate_verilog(config: HardwareConfig, *, optimize: bool = True, simulator: bool = False) -> str:
    """Verilog of :class:`~mvu.hdl.core.MvuCore` named ``mvu_core``; ``optimize`` runs the passes above,
    ``simulator`` elaborates it for a cycle-based simulator (same behaviour, idle pipelines not clocked)."""
    from amaranth.back import rtlil

    from mvu.hdl.core import MvuCore

    core = MvuCore(config)
    platform = _CycleSimulator() if simulator else None
    if not optimize:
        return component_verilog(core, "mvu_core", platform=platform)
    from amaranth._toolchain.yosys import find_yosys

    text = rtlil.convert(core, name="mvu_core", ports=ports(core), emit_src=False, platform=platform)
    script = f"read_rtlil <<rtlil\n{text}\nrtlil\n{SIMULATION_PASSES}\nwrite_verilog -norename -noattr"
    return find_yosys(lambda version: version >= (0, 40)).run(["-q", "-"], script, ignore_warnings=True)
