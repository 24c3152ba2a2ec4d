"""The workspace and its model registry: versions, tags, the content-addressed store, garbage collection,
concurrent registers, crashes at any moment, and the `mvu models` commands."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvu.host.control.registry import ModelRegistry, parse_reference
from mvu.host.control.workspace import MIGRATIONS, Workspace, WorkspaceError
from mvu.host.tools.cli import main


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(Workspace(tmp_path / "ws"))


def _other_package(toy_package_path: Path, folder: Path) -> Path:
    """The toy package with other bytes (recompressed): the same model, a different sha256."""
    import zipfile

    copy = folder / "toy-other.mvu"
    with zipfile.ZipFile(toy_package_path) as source, zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as target:
        for item in source.infolist():
            target.writestr(item.filename, source.read(item.filename))
    return copy


def test_versions_are_numbered_per_name_with_tags_and_manifest(registry, toy_package_path, tmp_path):
    first = registry.register(toy_package_path, "toy", tags={"stage": "dev"}, description="seeded weights")
    second = registry.register(_other_package(toy_package_path, tmp_path), "toy")
    other = registry.register(toy_package_path, "other")
    assert (first.reference, second.reference, other.reference) == ("toy:1", "toy:2", "other:1")
    assert first.tags == {"stage": "dev"} and first.description == "seeded weights"
    assert first.manifest["input"]["shape"] == [1, 3, 32, 32] and first.manifest["classes"] == 1000
    assert first.manifest["hardware_config"]["rows"] == 32
    assert registry.get("toy").version == 2  # the newest
    assert [v.reference for v in registry.list()] == ["other:1", "toy:1", "toy:2"]
    assert [v.reference for v in registry.list(tags={"stage": "dev"})] == ["toy:1"]
    # one stored file per content
    assert registry.workspace.store.contents() == {first.sha256, second.sha256}
    assert first.sha256 == other.sha256 != second.sha256


def test_download_returns_the_registered_bytes(registry, toy_package_path, tmp_path):
    version = registry.register(toy_package_path, "toy")
    path = registry.download("toy", None, tmp_path)
    assert path.name == "toy-1.mvu" and path.read_bytes() == toy_package_path.read_bytes()
    assert version.size == toy_package_path.stat().st_size


def test_tags_are_set_replaced_and_removed(registry, toy_package_path):
    registry.register(toy_package_path, "toy", tags={"stage": "dev"})
    assert registry.tag("toy", 1, {"stage": "prod", "owner": "ana"}).tags == {"owner": "ana", "stage": "prod"}
    assert registry.untag("toy", 1, ["owner"]).tags == {"stage": "prod"}
    with pytest.raises(WorkspaceError, match="model toy:1 has no tag 'owner'"):
        registry.untag("toy", 1, ["owner"])


def test_deleting_keeps_shared_bytes_and_gc_removes_the_rest(registry, toy_package_path, tmp_path):
    registry.register(toy_package_path, "a")
    registry.register(toy_package_path, "b")
    registry.delete("a", 1)
    assert len(registry.workspace.store.contents()) == 1  # b:1 still uses it
    registry.delete("b", 1)
    assert registry.workspace.store.contents() == set()
    # leftovers of crashes: a stored package without a record, a half-copied file
    sha256, _ = registry.workspace.store.put(toy_package_path)
    (registry.workspace.store.root / ".incoming-x").write_bytes(b"half")
    assert registry.collect_garbage() == [sha256]
    assert not list(registry.workspace.store.root.rglob("*.*")) and registry.workspace.store.contents() == set()


@pytest.mark.parametrize("call, message", [
    (lambda r, p: r.register(p, "bad name"), "model name 'bad name': use 1 to 63 letters"),
    (lambda r, p: r.get("missing"), "model 'missing' is not registered in .* \\(models: none\\)"),
    (lambda r, p: r.register(p.with_name("absent.mvu"), "x"), "cannot register .*absent.mvu: no such file"),
    (lambda r, p: r.register(p, "x", tags={"": "v"}), "tags are non-empty text keys"),
    (lambda r, p: parse_reference("toy:0"), "the version after ':' must be a number from 1"),
])
def test_bad_requests_say_what_is_wrong_and_change_nothing(registry, toy_package_path, call, message):
    with pytest.raises(WorkspaceError, match=message):
        call(registry, toy_package_path)
    assert registry.list() == [] and registry.workspace.store.contents() == set()


def test_a_file_that_is_not_a_package_is_refused(registry, tmp_path):
    junk = tmp_path / "junk.mvu"
    junk.write_bytes(b"not a zip")
    with pytest.raises(WorkspaceError, match="cannot register .*junk.mvu: .*not an mvu model package"):
        registry.register(junk, "junk")
    assert registry.workspace.store.contents() == set()


def test_a_newer_schema_is_refused(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    connection = sqlite3.connect(workspace.path / Workspace.DATABASE)
    connection.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    connection.close()
    with pytest.raises(WorkspaceError, match="is newer than this mvu knows"):
        Workspace(tmp_path / "ws")


_REGISTER = """
import sys
from mvu.host.control.registry import ModelRegistry
from mvu.host.control.workspace import Workspace
registry = ModelRegistry(Workspace(sys.argv[1]))
print("ready", flush=True)
for _ in range(int(sys.argv[3])):
    registry.register(sys.argv[2], "toy")
"""


def _registering(workspace: Path, package: Path, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _REGISTER, str(workspace), str(package), str(count)],
                            stdout=subprocess.PIPE, text=True)


def test_concurrent_registers_get_distinct_versions(tmp_path, toy_package_path):
    workspace = tmp_path / "ws"
    Workspace(workspace)
    processes = [_registering(workspace, toy_package_path, 1) for _ in range(8)]
    assert all(process.wait(timeout=120) == 0 for process in processes)
    versions = ModelRegistry(Workspace(workspace)).list("toy")
    assert sorted(v.version for v in versions) == list(range(1, 9))


def _check_consistent(workspace: Workspace) -> None:
    connection = workspace.connect()
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert not connection.execute("PRAGMA foreign_key_check").fetchall()
        versions = [row[0] for row in connection.execute("SELECT version FROM models ORDER BY version")]
    finally:
        connection.close()
    assert versions == list(range(1, len(versions) + 1))  # no gaps, no half-registered version
    registry = ModelRegistry(workspace)
    for version in registry.list():
        assert registry.package_path(version).stat().st_size == version.size  # every record has its bytes


def test_kill_9_at_random_moments_leaves_the_workspace_consistent(tmp_path, toy_package_path):
    rng = random.Random(7)
    workspace = Workspace(tmp_path / "ws")
    for _ in range(20):
        process = _registering(workspace.path, _other_package(toy_package_path, tmp_path), 1000)
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        _check_consistent(Workspace(workspace.path))
    registry = ModelRegistry(workspace)
    registry.collect_garbage()
    assert registry.workspace.store.contents() == {v.sha256 for v in registry.list()}
    assert not list(registry.workspace.store.root.glob(".incoming-*"))


def test_the_models_commands(tmp_path, toy_package_path, capsys):
    ws = ["--workspace", str(tmp_path / "ws")]
    assert main(["models", "register", str(toy_package_path), "--name", "toy", "--tag", "stage=dev",
                 "--description", "seeded", *ws]) == 0
    assert "toy:1" in capsys.readouterr().out
    assert main(["models", "list", *ws]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["MODEL", "SIZE", "REGISTERED", "TAGS", "DESCRIPTION"]
    assert listing[1].split()[0] == "toy:1" and "stage=dev" in listing[1]
    assert main(["models", "show", "toy", *ws]) == 0
    shown = capsys.readouterr().out
    assert "hardware     32x32 array" in shown
    assert "1000 classes" in shown
    assert main(["models", "download", "toy:1", "-o", str(tmp_path), *ws]) == 0
    assert (tmp_path / "toy-1.mvu").read_bytes() == toy_package_path.read_bytes()
    with pytest.raises(SystemExit, match="mvu: model 'toy': name the version, as toy:VERSION"):
        main(["models", "delete", "toy", *ws])
    with pytest.raises(SystemExit, match="mvu: --tag 'stage': write KEY=VALUE"):
        main(["models", "register", str(toy_package_path), "--name", "toy", "--tag", "stage", *ws])
    assert main(["models", "delete", "toy:1", *ws]) == 0
    assert main(["workspace", "gc", *ws]) == 0
    assert "removed 0 unreferenced packages" in capsys.readouterr().out
