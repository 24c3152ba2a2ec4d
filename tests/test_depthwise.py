"""Depthwise convolutions on the accelerator (window LOADs, diagonal weight tiles, accumulation): equal to the
definition and to the host path on the reference and the RTL; placement, refusals and a whole network."""

import numpy as np
import pytest
from conftest import NARROW, TINY
from test_prequantized import SHARED

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.requantization import Requantization
from mvu.host.compiler.builder import conv_placement
from mvu.host.depthwise import DepthwiseProgram
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.executors.requantize import requantize_rows
from mvu.host.gemm import ConvolutionInput, GemmError
from mvu.host.model.quantized import Layer, QuantizedModel, QuantParams
from mvu.host.runtime.runner import ModelRunner, im2col

#: rows > cols: each column tile reads part of an activation tile.
WIDE = HardwareConfig(rows=8, cols=4, act_depth=128, wgt_depth=64, acc_depth=128, mem_bytes=4)

#: (batch, channels, height, width, kernel, strides, pads, dilations)
SHAPES = {
    "3x3 s1 p1": (1, 8, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "3x3 s2, channels not a multiple of rows": (1, 13, 9, 8, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1)),
    "5x5 s1 p2": (1, 6, 8, 9, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    "5x5 s2 uneven pads, batch 2": (2, 37, 11, 10, (5, 5), (2, 2), (1, 2, 3, 2), (1, 1)),
    "3x5 dilated": (1, 5, 11, 9, (3, 5), (2, 1), (1, 2, 0, 1), (2, 1)),
}


def case(rng, shape, signed=False, rounding="fixed"):
    n, c, h, w, kernel, strides, pads, dilations = shape
    dtype, low, high = (np.int8, -128, 128) if signed else (np.uint8, 0, 256)
    conv = ConvolutionInput(rng.integers(low, high, (n, h, w, c), dtype=dtype), kernel, strides, pads, dilations)
    weights = rng.integers(-128, 128, (c, *kernel), dtype=np.int8)
    zero_point = int(rng.integers(low, high))
    limits = dict(out_zero_point=int(rng.integers(0, 9)), clamp_min=0, clamp_max=255)
    requant = Requantization(rng.integers(-999, 999, c), rng.integers(1 << 29, 1 << 30, c), rng.integers(36, 40, c),
                             **limits) if rounding == "fixed" else \
        Requantization.from_float32_scales(rng.uniform(2e-3, 2e-2, c).astype(np.float32), rng.integers(-999, 999, c),
                                           **limits)
    return conv, weights, zero_point, requant


def definition(conv, weights, zero_point, requant):
    """Each channel's window sums from host im2col patches, requantized per channel: ``[N * Ho * Wo, C]``."""
    c, taps = weights.shape[0], weights[0].size
    patches, _, _ = im2col(conv.x.transpose(0, 3, 1, 2), conv.kernel, conv.strides, conv.pads, conv.dilations,
                           zero_point)
    centred = patches.reshape(len(patches), taps, c).astype(np.int64) - zero_point
    sums = (centred * weights.reshape(c, taps).T).sum(axis=1).astype(np.int32)
    return requantize_rows(sums, requant.bias, requant.multiplier, requant.shift, requant.out_zero_point,
                           requant.clamp_min, requant.clamp_max, float32_scale=requant.float32_scale)


def run(executor, config, conv, weights, zero_point, requant):
    program = DepthwiseProgram(config, conv, weights, act_zero_point=zero_point, requant=requant)
    executor.run(program.program)
    return program


@pytest.mark.parametrize("config", [TINY, NARROW, WIDE, HardwareConfig()], ids=["tiny", "narrow", "wide", "default"])
@pytest.mark.parametrize("name", SHAPES)
def test_depthwise_programs_equal_the_definition_on_the_reference(name, config, plan):
    rng = np.random.default_rng(len(name))
    conv, weights, zero_point, requant = case(rng, SHAPES[name], signed="dilated" in name,
                                              rounding="float32" if "batch" in name else "fixed")
    program = run(ReferenceExecutor(config), config, conv, weights, zero_point, requant)
    expected = definition(conv, weights, zero_point, requant)
    np.testing.assert_array_equal(program.result().view(np.uint8), expected)
    assert len(np.unique(expected)) > 20  # not saturated
    assert program.macs == expected.size * weights[0].size


def test_a_rerun_reads_new_activations():
    rng = np.random.default_rng(3)
    conv, weights, zero_point, requant = case(rng, SHAPES["5x5 s2 uneven pads, batch 2"])
    program = run(ReferenceExecutor(NARROW), NARROW, conv, weights, zero_point, requant)
    again = ConvolutionInput(rng.integers(0, 256, conv.x.shape, dtype=np.uint8), conv.kernel, conv.strides, conv.pads)
    program.load_activations(again)
    ReferenceExecutor(NARROW).run(program.program)
    np.testing.assert_array_equal(program.result(), definition(again, weights, zero_point, requant))
    with pytest.raises(GemmError, match="37 channels"):
        program.load_activations(ConvolutionInput(again.x[..., :5], conv.kernel, conv.strides, conv.pads))


@pytest.mark.parametrize("name", ["3x3 s2, channels not a multiple of rows", "5x5 s2 uneven pads, batch 2"])
def test_depthwise_programs_are_bit_exact_on_the_rtl(name, verilator_executors):
    """The RTL writes the same bytes as the reference, equal to the definition."""
    conv, weights, zero_point, requant = case(np.random.default_rng(len(name)), SHAPES[name],
                                              rounding="float32" if "batch" in name else "fixed")
    rtl = run(verilator_executors(TINY), TINY, conv, weights, zero_point, requant)
    ref = run(ReferenceExecutor(TINY), TINY, conv, weights, zero_point, requant)
    np.testing.assert_array_equal(rtl.program.memory.data, ref.program.memory.data)
    np.testing.assert_array_equal(rtl.result(), definition(conv, weights, zero_point, requant))


def depthwise_model(placement: str, stride: int = 2) -> QuantizedModel:
    rng = np.random.default_rng(5)
    c = 6
    attrs = {"kernel": [3, 3], "strides": [stride, stride], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": c,
             "in_zero_point": 17, "clamp": (0, 255)}
    arrays = {"weight": rng.integers(-127, 128, (c, 1, 3, 3), dtype=np.int8), "bias": rng.integers(-999, 999, c),
              "multiplier": rng.integers(1 << 29, 1 << 30, c), "shift": rng.integers(36, 40, c)}
    layer = Layer("conv", "dw", ["x"], "y", placement, attrs, arrays, QuantParams(0.1, 9), 6 * 9 * 16)
    q = QuantParams(0.05, 17)
    return QuantizedModel("x", (1, c, 8, 8), q, "y", [layer], {"x": q, "y": layer.out_q}, {}, [])


@pytest.mark.parametrize("placement, stride, where", [
    ("accelerator", 2, "accelerator"), ("host", 2, "host"), ("accelerator", 16, "host")],
    ids=["accelerator", "package compiled before", "stride beyond window LOADs"])
def test_the_runner_places_depthwise_layers(placement, stride, where):
    """A depthwise layer placed on the accelerator runs as a program; one placed on the host (packages compiled
    before) or beyond what window LOADs express runs on the host, and its stats say so; same bytes."""
    x = np.random.default_rng(1).integers(0, 256, (2, 6, 8, 8), dtype=np.uint8)
    expected = ModelRunner(depthwise_model("host", stride), TINY, "numpy").run_batch(x)
    runner = ModelRunner(depthwise_model(placement, stride), TINY, "reference")
    np.testing.assert_array_equal(runner.run_batch(x), expected)
    (stats,) = runner.stats
    assert stats.placement == where and (stats.counters.get("compute", 0) > 0) == (where == "accelerator")
    definition = ModelRunner(depthwise_model(placement, stride), TINY, "numpy")  # products from their definition
    definition.run_batch(x)
    assert definition.stats[0].placement == where


def test_bad_depthwise_operands_are_refused_by_name():
    conv = ConvolutionInput(np.zeros((1, 4, 4, 8), np.uint8), (3, 3), pads=(1, 1, 1, 1))
    with pytest.raises(GemmError, match="strides 1..15"):
        DepthwiseProgram(TINY, ConvolutionInput(conv.x, (3, 3), (16, 16)), np.zeros((8, 3, 3), np.int8))
    with pytest.raises(GemmError, match=r"int8 \[8, 3, 3\]"):
        DepthwiseProgram(TINY, conv, np.zeros((8, 3, 2), np.int8))


def test_depthwise_convolutions_are_placed_on_the_accelerator():
    assert conv_placement(1, (16, 8, 3, 3)) == "accelerator"
    assert conv_placement(8, (8, 1, 3, 3)) == "accelerator"
    assert conv_placement(2, (8, 4, 3, 3)) == "host"  # grouped, not depthwise
    assert conv_placement(8, (16, 1, 3, 3)) == "host"  # a channel multiplier of 2


def test_efficientnet_lite0_logits_are_unchanged_with_depthwise_on_the_accelerator():
    """Every depthwise convolution of the recipe runs as a program on the reference executor; the logits equal
    the host path's (the numpy backend) bit for bit."""
    from mvu.host.compiler.recipes import compile_source, demo_photos
    from mvu.host.runtime.classify import Classifier

    package = compile_source("efficientnet-lite0", config=HardwareConfig(), progress=False)
    depthwise = [layer.name for layer in package.model.layers if layer.kind == "conv" and layer.attrs["group"] > 1]
    assert len(depthwise) == 16
    logits = {}
    for backend in ("numpy", "reference"):
        classifier = Classifier(package, backend)
        classifier.classify(demo_photos()[1])
        logits[backend] = classifier.runner.last_output
    placed = {s.name: (s.placement, s.lowering, s.counters.get("compute", 0) > 0) for s in classifier.runner.stats}
    assert all(placed[name] == ("accelerator", "windows", True) for name in depthwise), placed
    np.testing.assert_array_equal(logits["reference"], logits["numpy"])


MOBILENET = SHARED / "models" / "mobilenetv2-12-int8.onnx"


@pytest.mark.skipif(not MOBILENET.is_file(), reason=f"shared data absent ({MOBILENET} not found)")
def test_mobilenetv2_int8_with_depthwise_on_the_accelerator_still_agrees_with_onnxruntime():
    """The pre-quantized model (onnxruntime's float32 scales): its 17 depthwise convolutions as programs on the
    reference executor give the host path's logits bit for bit, and onnxruntime's top-1 on 8 shared images."""
    from mvu.host.compiler.recipes import compile_source
    from mvu.host.runtime.classify import Classifier
    from mvu.host.tools.evaluation import evaluate

    package = compile_source(str(MOBILENET), config=HardwareConfig(), progress=False)
    depthwise = [layer for layer in package.model.layers if layer.kind == "conv" and layer.attrs["group"] > 1]
    assert len(depthwise) == 17 and {layer.placement for layer in depthwise} == {"accelerator"}
    image = sorted((SHARED / "images").glob("*.jpg"))[0]
    logits = {}
    for backend in ("numpy", "reference"):
        classifier = Classifier(package, backend)
        classifier.classify(image)
        logits[backend] = classifier.runner.last_output
    np.testing.assert_array_equal(logits["reference"], logits["numpy"])
    report = evaluate(package, SHARED / "images", SHARED / "images" / "labels.csv", backend="reference",
                      onnx_model=MOBILENET, limit=8, progress=False)
    assert report["agreement_top1"] == 1.0, report


@pytest.mark.parametrize("attrs, on_array", [
    ({"kernel": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0], "count_include_pad": 0}, True),
    ({"kernel": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "count_include_pad": 1}, True),
    ({"kernel": [3, 3], "strides": [2, 2], "pads": [0, 0, 0, 0], "count_include_pad": 0, "ceil_mode": 1}, False),
    ({"kernel": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "count_include_pad": 0}, False),
], ids=["2x2 s2", "3x3 pads counted", "ceil mode", "pads not counted"])
def test_average_pools_with_one_count_run_as_depthwise_programs(attrs, on_array):
    """An AveragePool whose windows all divide by the whole kernel is a depthwise program of unit weights, in the
    host path's fixed point bit for bit; the others keep the host's per-window counts."""
    from mvu.host.runtime.runner import uniform_pool

    assert uniform_pool((10, 10), attrs) == on_array
    x = np.random.default_rng(2).integers(0, 256, (2, 6, 10, 10), dtype=np.uint8)
    q = QuantParams(0.05, 17)
    layer = Layer("avgpool", "pool", ["x"], "y", "accelerator" if on_array else "host", attrs, {}, QuantParams(0.04, 9))
    model = QuantizedModel("x", (1, 6, 10, 10), q, "y", [layer], {"x": q, "y": layer.out_q}, {}, [])
    expected = ModelRunner(model, TINY, "numpy").run_batch(x)
    runner = ModelRunner(model, TINY, "reference")
    np.testing.assert_array_equal(runner.run_batch(x), expected)
    assert (runner.stats[0].counters.get("compute", 0) > 0) == on_array
    assert len(np.unique(expected)) > 20
