"""A model repository folder in Triton's layout: ``DIR/NAME/VERSION/model.mvu``, each VERSION a positive integer
(other entries are ignored, as Triton ignores them)."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["MODEL_NAME", "PACKAGE_FILE", "folder_models", "folder_versions"]

#: The file of a version's package inside its folder.
PACKAGE_FILE = "model.mvu"
#: A model name usable in URLs (and as a folder name).
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def folder_models(folder: Path) -> list[str]:
    """The model names in ``folder``: its sub-folders with usable names."""
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and MODEL_NAME.match(entry.name))


def folder_versions(folder: Path, name: str) -> dict[str, Path] | None:
    """``{version: package path}`` of model ``name`` in ``folder`` (a version's package may be missing: its
    load fails and says so); None when the folder has no such model."""
    model = folder / name
    if not MODEL_NAME.match(name) or not model.is_dir():
        return None
    return {entry.name: entry / PACKAGE_FILE for entry in model.iterdir()
            if entry.is_dir() and entry.name.isascii() and entry.name.isdigit() and entry.name == str(int(entry.name))
            and int(entry.name) > 0}
