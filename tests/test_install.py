"""A non-editable install (`pip install .` into a clean venv) runs the demo and the compiler from outside the
repository: every package, the harness and the protos travel in the wheel, and nothing reads the source tree."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("hdl", "sim", "host", "models", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with mvu installed from a copy of the sources (not editable); its dependencies come from the
    test's own environment through a .pth file, so nothing downloads."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, source / name)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # The wheel is built with this environment's setuptools (a new venv's own may be too old to).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(work / "wheels"), str(source)], check=True, cwd=work)
    wheel, = (work / "wheels").glob("mvu-*.whl")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True, cwd=work)
    shutil.rmtree(source)  # the installed copy must not need it
    return venv


def _mvu(venv: Path, *args: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(venv / "bin" / "mvu"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_installed_packages_live_in_the_venv(installed, tmp_path):
    code = "import mvu.hdl, mvu.sim, mvu.host, mvu.models; print(*(m.__file__ for m in (mvu.hdl, mvu.sim, mvu.host, mvu.models)))"
    result = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, check=True)
    for path in result.stdout.split():
        assert Path(path).is_relative_to(installed), path


def test_compile_resnet18_from_the_installed_package(installed, tmp_path):
    result = _mvu(installed, "compile", "resnet18", "-o", "resnet18.mvu", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "resnet18.mvu").stat().st_size > 10_000_000  # 11.7 M int8 weights


@pytest.mark.slow  # the demo runs on the RTL
def test_demo_from_the_installed_package(installed, tmp_path):
    result = _mvu(installed, "demo", cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "espresso" in result.stdout  # coffee.png, as on the editable install
