"""Whole networks: every recipe and the onnx wheel's light models compile and run; ResNet-50 on the RTL."""

import numpy as np
import pytest

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.compiler.recipes import compile_source, demo_photos
from mvu.host.runtime.classify import Classifier
from mvu.models.architectures import light_model_path

CONFIG = HardwareConfig()


def compile_and_run(source: str) -> tuple:
    package = compile_source(source, config=CONFIG, progress=False)
    outputs = []
    for backend in ("numpy", "reference"):
        classifier = Classifier(package, backend)
        classifier.classify(demo_photos()[1])
        outputs.append(classifier.runner.last_output)
    return package, outputs


@pytest.mark.parametrize("source", [
    "resnet18", "densenet121",
    pytest.param("resnet152", marks=pytest.mark.slow), pytest.param("vgg16", marks=pytest.mark.slow),
    "light:resnet50", "light:densenet121", pytest.param("light:vgg19", marks=pytest.mark.slow),
])
def test_network_compiles_and_runs_on_the_reference_executor(source):
    path = str(light_model_path(source.split(":")[1])) if source.startswith("light:") else source
    package, (fast, reference) = compile_and_run(path)
    assert reference.size == 1000 and np.isfinite(reference).all()
    np.testing.assert_array_equal(reference, fast)  # the program-level executor agrees with the definition
    placements = {entry["placement"] for entry in package.report}
    assert "accelerator" in placements


@pytest.mark.slow
def test_resnet50_on_the_rtl_is_bit_exact_and_keeps_the_array_busy(verilator_executors):
    """ResNet-50 runs on the RTL as one program, no host layer between its input and its logits, to the
    reference's logits."""
    from mvu.host.tools.benchmarks import bench_network

    report = bench_network("resnet50", CONFIG, executors={"verilator": verilator_executors(CONFIG)})
    assert report["bit_exact"], report
    rtl = report["backends"]["verilator"]
    assert rtl["program"].startswith("one program") and not rtl["host_layers"], rtl
    assert rtl["mac_utilization"] >= 0.75, rtl
    assert rtl["cycles"] > report["accelerator_macs"] / CONFIG.macs_per_cycle


def test_the_onnxruntime_comparison_runs_one_int8_model_on_both():
    from mvu.host.tools.benchmarks import bench_network

    report = bench_network("toy", CONFIG, backends=("reference",), compare_onnxruntime=True)["onnxruntime_int8"]
    assert report["mvu"]["reference"]["bit_exact_with_onnxruntime"], report
    assert report["onnxruntime_p50_seconds"] > 0 and report["products_p50_seconds"] > 0
    assert report["mvu"]["reference"]["times_onnxruntime"] > report["products_times_onnxruntime"] > 0
    assert "onnxruntime" in report["products_engine"]
