"""Synthesis of the core with Yosys (the YoWASP build from PyPI) and a cell report."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.toolchain import cache_dir, yosys
from mvu.hdl.verilog import generate_verilog

__all__ = ["synthesize", "parse_cell_counts"]

_SYNTH_COMMANDS = {"ecp5": "synth_ecp5 -top mvu_core -abc9", "ice40": "synth_ice40 -top mvu_core -dsp -abc9"}


def parse_cell_counts(log: str) -> dict[str, int]:
    """Cell counts from the last ``stat`` section of a Yosys log."""
    sections = log.split("Printing statistics.")
    if len(sections) < 2:
        raise RuntimeError("Yosys printed no statistics")
    cells = {}
    for count, name in re.findall(r"^\s+(\d+)\s+(?:\S+\s+)?\$?([A-Za-z_][\w$]*)\s*$", sections[-1], re.M):
        if name.isupper() or name.startswith(("TRELLIS", "MULT", "DP16", "CCU2", "LUT", "PFU", "DPR16")):
            cells[name] = cells.get(name, 0) + int(count)
    return cells


def synthesize(config: HardwareConfig, *, target: str = "ecp5") -> dict:
    """Synthesize the core for ``target`` and return cell counts and the time taken."""

    if target not in _SYNTH_COMMANDS:
        raise ValueError(f"unknown synthesis target {target!r}; choose one of {', '.join(_SYNTH_COMMANDS)}")
    started = time.perf_counter()
    # YoWASP tools see a private /tmp, so work under the cache directory with relative paths.
    work = Path(tempfile.mkdtemp(prefix="synth-", dir=cache_dir()))
    try:
        (work / "mvu_core.v").write_text(generate_verilog(config))
        script = f"read_verilog mvu_core.v; {_SYNTH_COMMANDS[target]}; stat"
        result = subprocess.run([yosys(), "-q", "-l", "yosys.log", "-p", script], cwd=work,
                                capture_output=True, text=True)
        log = (work / "yosys.log").read_text() if (work / "yosys.log").exists() else result.stdout
        if result.returncode != 0:
            raise RuntimeError(f"Yosys failed (exit {result.returncode}):\n{(result.stderr or log)[-3000:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "target": target,
        "config": config.to_dict(),
        "config_description": config.describe(),
        "cells": parse_cell_counts(log),
        "seconds": time.perf_counter() - started,
    }
