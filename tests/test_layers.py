"""The layers contract (docs/architecture.md): imports point host -> sim -> hdl, the hardware contract stands
alone, and no package's modules import each other in a cycle; import names are folders."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"hdl": "mvu.hdl", "sim": "mvu.sim", "host": "mvu.host", "models": "mvu.models"}
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the packages under ``tree``/mvu, with the contracts of pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=300)


def _copy_packages(tmp_path: Path) -> Path:
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, tmp_path / "mvu" / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_layers_contract_is_kept(tmp_path):
    result = _lint_imports(_copy_packages(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    # hdl -> host: an upward import
    ("hdl/contract/config.py", "import mvu.host.tools.cli", "host -> sim -> hdl BROKEN"),
    # the contract reaching into the design
    ("hdl/contract/isa.py", "import mvu.hdl.core", "the hardware contract imports nothing else of mvu BROKEN"),
    # executors -> runtime: upward inside the host
    ("host/executors/reference.py", "import mvu.host.runtime.runner", "executors BROKEN"),
    # reference -> kernels -> reference: a cycle between siblings
    ("host/executors/kernels.py", "import mvu.host.executors.reference",
     "no import cycles among the modules of any package BROKEN"),
])
def test_an_upward_import_or_a_cycle_breaks_it(tmp_path, module, line, contract):
    tree = _copy_packages(tmp_path)
    path = tree / "mvu" / module
    path.write_text(path.read_text() + f"\n{line}  # added by the test\n")
    result = _lint_imports(tree)
    assert result.returncode != 0
    assert contract in re.sub(r"\s+", " ", result.stdout), result.stdout


def _packages_on_disk() -> set[str]:
    return {".".join([FOLDERS[init.relative_to(ROOT).parts[0]], *init.relative_to(ROOT).parts[1:-1]])
            for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")}


def test_every_package_folder_is_installed_under_its_folder_name():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {name: folder for folder, name in FOLDERS.items()}
    assert set(setuptools["packages"]) == _packages_on_disk()


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (mvu imports by full name)"
            names.add(node.module)
    return names


def test_imports_use_full_names_and_the_contract_imports_only_itself():
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            modules = _imported_modules(path)
            if path.is_relative_to(ROOT / "hdl" / "contract"):
                outside = {m for m in modules if m.startswith("mvu") and not m.startswith("mvu.hdl.contract")}
                assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"
