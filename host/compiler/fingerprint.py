"""One fingerprint of the code that decides what a compiled package holds: the compiler and every layer it
stands on (runtime, model format, GEMM programs, executors), the hardware contract and the model recipes.
Cached packages are keyed by it, so changing any of those files recompiles them."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Iterable

__all__ = ["COMPILER_PACKAGES", "compiler_sources", "fingerprint"]

#: The packages whose sources decide a package's contents (the compiler's layer and all below it).
COMPILER_PACKAGES = ("mvu.host.compiler", "mvu.host.runtime", "mvu.host.model", "mvu.host.network_program",
                     "mvu.host.gemm", "mvu.host.depthwise", "mvu.host.packed_rows", "mvu.host.global_pool",
                     "mvu.host.executors", "mvu.hdl.contract", "mvu.models")


def compiler_sources() -> list[Path]:
    """Every Python source of :data:`COMPILER_PACKAGES` (a module counts as its file), in a fixed order."""
    files = []
    for name in COMPILER_PACKAGES:
        module = importlib.import_module(name)
        path = Path(module.__file__)
        files += sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
    return files


def fingerprint(files: Iterable[Path] | None = None) -> str:
    """A short hash of the files' names and bytes (by default :func:`compiler_sources`)."""
    digest = hashlib.sha256()
    for path in compiler_sources() if files is None else files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]
