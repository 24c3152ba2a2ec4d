"""Builds the Verilator model of :class:`~mvu.hdl.core.MvuCore` as a shared library, cached."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.toolchain import cache_dir
from mvu.hdl.verilog import SIMULATION_PASSES, generate_verilog
from mvu.sim.toolchain import tool_environment, verilator_root

__all__ = ["build_model", "model_key", "hdl_sources"]

_HARNESS = Path(__file__).with_name("harness.cpp")
VERILATOR_FLAGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert", "-Wno-fatal", "-Wno-lint",
                   "-Wno-style"]
CXX_FLAGS = "-fPIC -O3"


def hdl_sources() -> bytes:
    """Every source of the design and its contract (not the synthesis flow), with its path under hdl/."""
    import mvu.hdl

    hdl_dir = Path(mvu.hdl.__file__).parent
    design = [path for path in sorted(hdl_dir.rglob("*.py")) if path.name != "synthesis.py"]
    return b"".join(path.relative_to(hdl_dir).as_posix().encode() + path.read_bytes() for path in design)


def model_key(config: HardwareConfig) -> str:
    """Hash of everything the model is built from: design sources, parameters, harness, this recipe, tools."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    digest.update(hdl_sources())
    digest.update(_HARNESS.read_bytes())
    digest.update(" ".join(VERILATOR_FLAGS + [CXX_FLAGS, SIMULATION_PASSES]).encode())
    for package in ("amaranth", "verilator"):
        digest.update(f"{package}={metadata.version(package)}".encode())
    return digest.hexdigest()[:20]


def build_model(config: HardwareConfig, *, verbose: bool = False) -> Path:
    """Return the path of the model's shared library, building it if the cache lacks it."""
    target = cache_dir() / "verilator" / model_key(config)
    library = target / "libmvu_sim.so"
    if library.exists():
        return library
    started = time.perf_counter()
    print(f"mvu: building the Verilator model ({config.describe()}); cached after this", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="mvu-build-", dir=cache_dir()))
    try:
        (work / "mvu_core.v").write_text(generate_verilog(config, simulator=True))
        shutil.copy(_HARNESS, work / "harness.cpp")
        command = [
            str(verilator_root() / "bin" / "verilator"), "--cc", "mvu_core.v", "--top-module", "mvu_core",
            "--exe", "harness.cpp", "-o", "libmvu_sim.so", "--Mdir", "obj",
            *VERILATOR_FLAGS,
            "-CFLAGS", f"{CXX_FLAGS} -DMVU_MEM_BYTES={config.mem_bytes}", "-LDFLAGS", "-shared",
            "--build", "-j", str(max(1, min(os.cpu_count() or 1, 4))),
        ]
        result = subprocess.run(command, cwd=work, env=tool_environment(), capture_output=not verbose, text=True)
        if result.returncode != 0:
            log = (result.stdout or "")[-4000:] + (result.stderr or "")[-4000:]
            raise RuntimeError(f"Verilator build failed (exit {result.returncode}) in {work}:\n{log}")
        (work / "mvu_core.v").rename(work / "obj" / "mvu_core.v")
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = work / "staged"
        staged.mkdir()
        shutil.copy(work / "obj" / "libmvu_sim.so", staged / "libmvu_sim.so")
        shutil.copy(work / "obj" / "mvu_core.v", staged / "mvu_core.v")
        try:
            staged.rename(target)  # atomic: a concurrent build of the same key simply loses
        except OSError:
            if not library.exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"mvu: model built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return library
