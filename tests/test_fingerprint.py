"""The compiler's fingerprint covers every source that decides a package, and keys the recipe cache."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.compiler import fingerprint as fingerprint_module
from mvu.host.compiler import recipes
from mvu.host.compiler.fingerprint import compiler_sources, fingerprint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sources(tmp_path) -> list[Path]:
    """Copies of the compiler's sources, in the same order (the real files are never touched)."""
    copies = []
    for path in compiler_sources():
        copy = tmp_path / "sources" / path.resolve().relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copies.append(Path(shutil.copy2(path, copy)))
    return copies


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def test_the_sources_include_the_layers_below_the_compiler_and_the_contract():
    files = {path.resolve().relative_to(ROOT).as_posix() for path in compiler_sources()}
    assert {"host/gemm.py", "host/compiler/prequantized.py", "host/compiler/quantize.py",
            "hdl/contract/requantization.py", "host/executors/requantize.py", "host/runtime/runner.py",
            "host/model/package.py"} <= files
    assert {path.relative_to(ROOT).as_posix() for path in (ROOT / "models").glob("*.py")} <= files


def test_every_module_compiling_a_recipe_loads_is_in_the_sources():
    """What a compile runs, in a fresh interpreter: only the bare ``mvu``, ``mvu.hdl`` and ``mvu.host`` packages'
    own ``__init__`` files may lie outside the fingerprint."""
    script = ("import json, sys\n"
              "from mvu.hdl.contract.config import HardwareConfig\n"
              "from mvu.host.compiler.recipes import compile_source\n"
              "compile_source('toy', config=HardwareConfig(), progress=False)\n"
              "print(json.dumps({n: m.__file__ for n, m in sys.modules.items()\n"
              "                  if n.startswith('mvu') and getattr(m, '__file__', None)}))\n")
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                       cwd=ROOT).stdout.splitlines()[-1])
    assert "mvu.host.compiler.quantize" in loaded and "mvu.host.gemm" in loaded
    covered = {path.resolve() for path in compiler_sources()}
    missing = {name for name, file in loaded.items()
               if Path(file).resolve() not in covered and name not in ("mvu", "mvu.hdl", "mvu.host")}
    assert not missing, f"loaded by the compiler but not fingerprinted: {sorted(missing)}"


def test_changing_any_byte_of_any_source_changes_the_fingerprint(sources):
    assert fingerprint(sources) == fingerprint()  # the copies hash like the originals
    original = fingerprint(sources)
    seen = {original}
    for path in sources:
        kept = path.read_bytes()
        flip_one_byte(path)
        changed = fingerprint(sources)
        assert changed not in seen, f"changing {path.name} left the fingerprint {changed}"
        seen.add(changed)
        path.write_bytes(kept)
    assert fingerprint(sources) == original


def test_a_cached_recipe_is_compiled_once_and_again_after_a_source_changes(sources, tmp_path, monkeypatch):
    monkeypatch.setenv("MVU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint_module, "compiler_sources", lambda: sources)
    compiled = []

    def compile_source(source, **kwargs):
        compiled.append(source)
        return real_compile(source, progress=False, **kwargs)

    real_compile = recipes.compile_source
    monkeypatch.setattr(recipes, "compile_source", compile_source)
    config = HardwareConfig()
    first = recipes.cached_package("toy", config)
    assert compiled == ["toy"]
    again = recipes.cached_package("toy", config)
    assert compiled == ["toy"]  # from the cache
    assert [layer.name for layer in again.model.layers] == [layer.name for layer in first.model.layers]
    cached = sorted((tmp_path / "cache" / "models").iterdir())
    assert len(cached) == 1 and fingerprint(sources) in cached[0].name

    requantization = next(path for path in sources if path.name == "requantization.py")
    kept = requantization.read_bytes()
    requantization.write_bytes(kept + b"\n# a change to the hardware contract\n")
    recipes.cached_package("toy", config)
    assert compiled == ["toy", "toy"]  # recompiled for the changed source
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 2

    requantization.write_bytes(kept)
    recipes.cached_package("toy", config)
    assert compiled == ["toy", "toy"]  # the first package again, still cached
