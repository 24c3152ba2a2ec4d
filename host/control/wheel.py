"""The running mvu as a wheel: its installed sources (editable or not) zipped in the wheel format, with
its dependencies and its `mvu` command, so a deploy bundle carries exactly the code that was tested."""

from __future__ import annotations

import base64
import hashlib
import importlib
import zipfile
from importlib import metadata
from pathlib import Path

__all__ = ["write_wheel", "PACKAGES"]

#: The import packages that make up mvu, each with the folder its files come from.
PACKAGES = ("mvu.hdl", "mvu.sim", "mvu.host", "mvu.models")
_SKIP_SUFFIXES = (".pyc", ".nbi", ".nbc")


def _files() -> list[tuple[str, Path]]:
    """(path inside the wheel, file) for every source and data file of :data:`PACKAGES`."""
    files = []
    for name in PACKAGES:
        root = Path(importlib.import_module(name).__file__).parent
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in _SKIP_SUFFIXES:
                files.append(("/".join([*name.split("."), *path.relative_to(root).parts]), path))
    return files


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(folder: Path) -> Path:
    """Writes ``mvu-VERSION-py3-none-any.whl`` into ``folder``; returns its path."""
    version = metadata.version("mvu")
    requires = [r for r in metadata.requires("mvu") or [] if "extra ==" not in r]
    info = f"mvu-{version}.dist-info"
    dist_files = {
        f"{info}/METADATA": "\n".join(["Metadata-Version: 2.1", "Name: mvu", f"Version: {version}",
                                       "Requires-Python: >=3.11", *(f"Requires-Dist: {r}" for r in requires)]) + "\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: mvu\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": "[console_scripts]\nmvu = mvu.host.tools.cli:main\n",
    }
    path = folder / f"mvu-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, source in _files():
            data = source.read_bytes()
            wheel.writestr(name, data)
            records.append(_record_line(name, data))
        for name, text in dist_files.items():
            wheel.writestr(name, text)
            records.append(_record_line(name, text.encode()))
        wheel.writestr(f"{info}/RECORD", "\n".join([*records, f"{info}/RECORD,,"]) + "\n")
    return path
