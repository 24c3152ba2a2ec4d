"""The model registry: packages registered under a name, with versions numbered per name, tags and a
description, stored once by content in the workspace."""

from __future__ import annotations

import getpass
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mvu.host.control.workspace import Workspace, WorkspaceError
from mvu.host.model.package import ModelPackage, PackageError, load_package

__all__ = ["ModelVersion", "ModelRegistry", "parse_reference", "check_name", "utc_now"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_LABELS_SHOWN = 5


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise WorkspaceError(f"model name {name!r}: use 1 to 63 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
    return name


def parse_reference(reference: str) -> tuple[str, int | None]:
    """``NAME`` (the newest version) or ``NAME:VERSION`` -> (name, version or None)."""
    name, _, version = reference.partition(":")
    if not version:
        return check_name(name), None
    if not version.isdigit() or int(version) < 1:
        raise WorkspaceError(f"model {reference!r}: the version after ':' must be a number from 1")
    return check_name(name), int(version)


def _summary(package: ModelPackage) -> dict:
    """What `mvu models show` prints of a package besides the registry's own fields."""
    model = package.model
    return {
        "package_name": package.name,
        "hardware": package.config.describe(),
        "hardware_config": package.config.to_dict(),
        "input": {"name": model.input, "shape": list(model.input_shape)},
        "output": model.output,
        "preprocessing": package.preprocessing,
        "classes": len(package.labels),
        "labels": package.labels[:_LABELS_SHOWN],
        "layers": len(model.layers),
        "accelerator_layers": sum(layer.placement == "accelerator" for layer in model.layers),
        "source_sha256": package.source_sha256,
    }


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model."""

    name: str
    version: int
    sha256: str
    size: int
    description: str
    registered_by: str
    registered_at: str
    manifest: dict
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict:
        return asdict(self)


class ModelRegistry:
    """The models of one workspace."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace

    def register(self, package_path: str | Path, name: str, *, tags: dict[str, str] | None = None,
                 description: str = "") -> ModelVersion:
        """Validates the package, stores it, and records it as the next version of ``name``."""
        check_name(name)
        tags = self._check_tags(tags or {})
        path = Path(package_path)
        try:
            summary = _summary(load_package(path))
        except PackageError as error:
            raise WorkspaceError(f"cannot register {error}") from None
        sha256, size = self.workspace.store.put(path)  # before the record: no record without its package
        with self.workspace.transaction() as db:
            version = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE name = ?",
                                 (name,)).fetchone()[0]
            db.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (name, version, sha256, size, description, _user(), utc_now(), json.dumps(summary)))
            db.executemany("INSERT INTO tags VALUES (?, ?, ?, ?)",
                           [(name, version, key, value) for key, value in tags.items()])
        return self.get(name, version)

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """One version (the newest when ``version`` is None)."""
        versions = self.list(name) if version is None else self._select("name = ? AND version = ?", (name, version))
        if not versions:
            known = ", ".join(sorted({v.name for v in self.list()})) or "none"
            what = f"model {name!r}" if version is None else f"model {name}:{version}"
            raise WorkspaceError(f"{what} is not registered in {self.workspace.path} (models: {known})")
        return versions[-1]

    def list(self, name: str | None = None, *, tags: dict[str, str] | None = None) -> list[ModelVersion]:
        """Registered versions, by name then version; only ``name``'s, and only those with all ``tags``."""
        versions = self._select("name = ?", (name,)) if name is not None else self._select("1", ())
        return [v for v in versions if all(v.tags.get(k) == value for k, value in (tags or {}).items())]

    def package_path(self, version: ModelVersion) -> Path:
        return self.workspace.store.path(version.sha256)

    def download(self, name: str, version: int | None, destination: str | Path) -> Path:
        """Copies the package of ``name:version`` to ``destination`` (a file, or a folder to put it in)."""
        found = self.get(name, version)
        destination = Path(destination)
        if destination.is_dir():
            destination = destination / f"{found.name}-{found.version}.mvu"
        return self.workspace.store.copy_out(found.sha256, destination)

    def tag(self, name: str, version: int, tags: dict[str, str]) -> ModelVersion:
        tags = self._check_tags(tags)
        self.get(name, version)
        with self.workspace.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?)",
                           [(name, version, key, value) for key, value in tags.items()])
        return self.get(name, version)

    def untag(self, name: str, version: int, keys: list[str]) -> ModelVersion:
        found = self.get(name, version)
        missing = [key for key in keys if key not in found.tags]
        if missing:
            raise WorkspaceError(f"model {found.reference} has no tag {', '.join(map(repr, missing))}")
        with self.workspace.transaction() as db:
            db.executemany("DELETE FROM tags WHERE name = ? AND version = ? AND key = ?",
                           [(name, version, key) for key in keys])
        return self.get(name, version)

    def delete(self, name: str, version: int) -> ModelVersion:
        """Removes one version's record, then its package unless another version has the same bytes; refused
        while a service serves that version."""
        found = self.get(name, version)
        with self.workspace.transaction() as db:
            users = [row[0] for row in db.execute(
                "SELECT service FROM service_models WHERE name = ? AND version = ? ORDER BY service", (name, version))]
            if users:
                raise WorkspaceError(f"model {found.reference} is used by service {', '.join(map(repr, users))}: "
                                     f"delete the service first (mvu services delete {users[0]})")
            db.execute("DELETE FROM models WHERE name = ? AND version = ?", (name, version))
            shared = db.execute("SELECT 1 FROM models WHERE sha256 = ?", (found.sha256,)).fetchone()
        if not shared:
            self.workspace.store.remove(found.sha256)
        return found

    def collect_garbage(self) -> list[str]:
        """Removes stored packages that no version references (left by deletions or crashes)."""
        connection = self.workspace.connect()
        try:
            keep = {row[0] for row in connection.execute("SELECT sha256 FROM models")}
        finally:
            connection.close()
        return self.workspace.store.collect(keep)

    def _select(self, where: str, parameters: tuple) -> list[ModelVersion]:
        connection = self.workspace.connect()
        try:
            rows = connection.execute(f"SELECT * FROM models WHERE {where} ORDER BY name, version",
                                      parameters).fetchall()
            tags: dict[tuple, dict] = {}
            for row in connection.execute("SELECT * FROM tags ORDER BY key"):
                tags.setdefault((row["name"], row["version"]), {})[row["key"]] = row["value"]
        finally:
            connection.close()
        return [ModelVersion(row["name"], row["version"], row["sha256"], row["size"], row["description"],
                             row["registered_by"], row["registered_at"], json.loads(row["manifest"]),
                             tags.get((row["name"], row["version"]), {})) for row in rows]

    @staticmethod
    def _check_tags(tags: dict[str, str]) -> dict[str, str]:
        for key, value in tags.items():
            if not isinstance(key, str) or not key.strip() or not isinstance(value, str):
                raise WorkspaceError(f"tag {key!r}={value!r}: tags are non-empty text keys with text values")
        return dict(tags)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
