"""A content-addressed store of files: each kept once under its SHA-256, written atomically."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["PackageStore", "sha256_of"]

_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class PackageStore:
    """Files under ``root/<first two hex digits>/<sha256>``. A file appears under its name whole or not at
    all (copied to a temporary name, flushed to disk, then renamed), so a crash leaves at worst a stray
    temporary file, which :meth:`collect` removes."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, source: Path) -> tuple[str, int]:
        """Copies ``source`` into the store (once per content); returns its SHA-256 and size."""
        handle, temporary = tempfile.mkstemp(prefix=".incoming-", dir=self.root)
        try:
            digest = hashlib.sha256()
            with open(source, "rb") as src, os.fdopen(handle, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            sha256 = digest.hexdigest()
            target = self.path(sha256)
            target.parent.mkdir(exist_ok=True)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return sha256, target.stat().st_size

    def contents(self) -> set[str]:
        """The SHA-256 of every file in the store."""
        return {path.name for path in self.root.glob("??/*") if not path.name.startswith(".")}

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def collect(self, keep: set[str]) -> list[str]:
        """Removes every stored file not in ``keep``, and stray temporary files; returns what it removed."""
        removed = sorted(self.contents() - keep)
        for sha256 in removed:
            self.remove(sha256)
        for stray in self.root.glob(".incoming-*"):
            stray.unlink(missing_ok=True)
        return removed

    def copy_out(self, sha256: str, destination: Path) -> Path:
        shutil.copyfile(self.path(sha256), destination)
        return destination
