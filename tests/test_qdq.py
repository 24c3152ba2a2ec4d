"""QDQ models (onnxruntime's default static quantization: QuantizeLinear/DequantizeLinear around float ops) import
with their own scales and compute what onnxruntime's QDQ session computes, bit for bit."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType
from qdq_models import quantize_qdq

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.compiler.compile import compile_model
from mvu.host.compiler.graph import import_onnx
from mvu.host.compiler.prequantized import from_qlinear_graph
from mvu.host.compiler.qdq import fold_qdq
from mvu.host.compiler.recipes import RECIPES, demo_photos
from mvu.host.runtime.preprocess import PreprocessRecipe, preprocess
from mvu.host.runtime.runner import ModelRunner
from mvu.models.onnx_builder import GraphBuilder

CONFIG = HardwareConfig()
BACKENDS = ("numpy", "reference")


def assert_bit_exact(model, path, images, options: ort.SessionOptions | None = None) -> None:
    """The model's logits equal onnxruntime's on the QDQ file, on every backend."""
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for backend in BACKENDS:
        runner = ModelRunner(model, CONFIG, backend)
        for image in images:
            expected = session.run(None, {name: image[None]})[0]
            got = runner.run(model.input_q.quantize(image[None]))
            np.testing.assert_array_equal(got, expected.reshape(got.shape), err_msg=backend)


@pytest.mark.parametrize("opset", [17, 21])
@pytest.mark.parametrize("recipe", ["toy", "resnet18"])
def test_a_recipe_quantized_to_qdq_runs_bit_exact(recipe, opset, tmp_path, capsys):
    fp32, preprocessing = RECIPES[recipe]()
    steps = PreprocessRecipe.from_dict(preprocessing)
    rng = np.random.default_rng(opset)
    images = np.concatenate([preprocess(photo, steps) for photo in demo_photos()])
    path = quantize_qdq(fp32, np.concatenate([images, rng.normal(0, 1, images.shape)]), tmp_path, opset=opset)
    source = onnx.load(path)
    assert source.opset_import[0].version == opset
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= {node.op_type for node in source.graph.node}
    package = compile_model(str(path), config=CONFIG, preprocessing=None, labels=[], name=recipe)
    assert "WARNING" not in capsys.readouterr().err  # the preprocessing came from the model's metadata
    assert package.preprocessing == steps.to_dict()
    kinds = {layer.kind for layer in package.model.layers}
    assert {"conv", "gap", "fc_quantized", "dequantize"} <= kinds
    assert all(layer.attrs.get("rounding", "float32") == "float32" for layer in package.model.layers)
    assert_bit_exact(package.model, path, images[:2])


def zoo(average_pool: bool = False) -> onnx.ModelProto:
    """Convolutions, a pooled branch concatenated with another, MaxPool, ReLU6 (which the quantizer folds into a
    QuantizeLinear of its own range, so that onnxruntime requantizes around the MaxPool before it), a residual
    Add, global pooling and MatMul + Add: the QDQ patterns beyond the recipes'."""
    rng = np.random.default_rng(3)
    g = GraphBuilder("zoo", (1, 3, 16, 16))
    x = g.relu(g.conv("input", rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8), padding=1))
    a = g.average_pool(x, 3, 1, 1) if average_pool else g.max_pool(x, 3, 1, 1)
    b = g.conv(x, rng.normal(0, 0.2, (8, 8, 1, 1)), rng.normal(0, 0.1, 8))
    c = g.relu6(g.max_pool(g.concat([a, b]), 2, 2))
    d = g.relu(g.max_pool(c, 1, 1))
    y = g.flatten(g.global_average_pool(g.add(c, d)))
    y = g.node("MatMul", [y, g.constant(rng.normal(0, 0.3, (16, 10)).astype(np.float32), "mw")])
    return g.build(g.add(y, g.constant(rng.normal(0, 0.1, 10).astype(np.float32), "mb")), classes=10)


@pytest.mark.parametrize("opset, activations, per_channel", [
    (17, QuantType.QUInt8, True), (21, QuantType.QUInt8, False), (17, QuantType.QInt8, True),
    (21, QuantType.QInt8, False)])
def test_requantizing_pools_concat_and_int8_activations_run_bit_exact(opset, activations, per_channel, tmp_path):
    rng = np.random.default_rng(5)
    path = quantize_qdq(zoo(), rng.normal(0, 1, (8, 3, 16, 16)), tmp_path, opset=opset, activations=activations,
                        per_channel=per_channel)
    model = from_qlinear_graph(fold_qdq(import_onnx(str(path))))
    requantized = [layer.name for layer in model.layers if layer.name.endswith(("_requantize", "_input0"))]
    assert requantized, "the model no longer exercises requantization"
    assert [layer.kind for layer in model.layers].count("concat") == 1
    assert_bit_exact(model, path, rng.normal(0, 1, (6, 3, 16, 16)).astype(np.float32))


def test_average_pooling_is_within_one_code_of_onnxruntime(tmp_path):
    """onnxruntime's QLinearAveragePool averages the dequantized floats; mvu's average pooling requantizes the
    integer sums in the post-processor's fixed point: the codes differ by at most one (docs/compiler.md)."""
    rng = np.random.default_rng(6)
    path = quantize_qdq(zoo(average_pool=True), rng.normal(0, 1, (8, 3, 16, 16)), tmp_path)
    model = from_qlinear_graph(fold_qdq(import_onnx(str(path))))
    pool = next(layer for layer in model.layers if layer.kind == "avgpool")
    probe = onnx.load(path)
    producer = next(node for node in probe.graph.node if node.input and node.input[0] == pool.name)
    probe.graph.output.append(onnx.ValueInfoProto(name=producer.output[0]))  # the pool's QuantizeLinear
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    runner = ModelRunner(model, CONFIG, "numpy")
    differ = 0
    for image in rng.normal(0, 1, (4, 1, 3, 16, 16)).astype(np.float32):
        expected = session.run([producer.output[0]], {"input": image})[0].astype(np.int16)
        runner.run(model.input_q.quantize(image))
        difference = np.abs(runner.tensors[pool.output].astype(np.int16) - expected)
        assert difference.max() <= 1
        differ += int(np.count_nonzero(difference))
    assert differ > 0  # when this fails, average pooling has become exact: say so in docs/compiler.md


def clamps_model(scale: float, zero: int, out_scale: float, out_zero: int) -> onnx.ModelProto:
    """QuantizeLinear, then Clip(-0.5, 1.5) and Relu left as float ops between DequantizeLinear and QuantizeLinear
    (as models quantized by other tools keep them); the Clip's output quantized with ``out_scale``, ``out_zero``."""
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in (
        ("s", np.float32(scale)), ("z", np.uint8(zero)), ("s2", np.float32(out_scale)), ("z2", np.uint8(out_zero)),
        ("low", np.float32(-0.5)), ("high", np.float32(1.5)))]
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q0"], name="q0"),
             helper.make_node("DequantizeLinear", ["q0", "s", "z"], ["d0"], name="d0"),
             helper.make_node("Clip", ["d0", "low", "high"], ["c"], name="clip"),
             helper.make_node("QuantizeLinear", ["c", "s2", "z2"], ["q1"], name="q1"),
             helper.make_node("DequantizeLinear", ["q1", "s2", "z2"], ["d1"], name="d1"),
             helper.make_node("Relu", ["d1"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "s2", "z2"], ["q2"], name="q2"),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["output"], name="d2")]
    graph = helper.make_graph(nodes, "clamps", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("scales", [
    (0.02, 100, 0.02, 100),  # one quantization: clamps of the codes
    (0.02, 100, 0.011, 60),  # requantized, by x_scale / y_scale
    (0.08995980024337769, 233, 0.07710840553045273, 38)])  # by a float32 one ulp off it
def test_relu_and_clip_between_dequantize_and_quantize_run_bit_exact(scales, tmp_path):
    path = tmp_path / "clamps.onnx"
    onnx.save(clamps_model(*scales), path)
    model = from_qlinear_graph(fold_qdq(import_onnx(str(path))))
    requantizes = scales[:2] != scales[2:]
    assert [layer.kind for layer in model.layers] == ["conv"] * requantizes + ["clamp", "clamp", "dequantize"]
    if requantizes:
        ratio = np.float32(scales[0]) / np.float32(scales[2])
        assert (model.layers[0].arrays["scale"][0] == ratio) == (scales[0] == 0.02)
    rng = np.random.default_rng(7)
    assert_bit_exact(model, path, rng.normal(0, 4, (8, 3, 8, 8)).astype(np.float32))


def test_float_weights_behind_a_quantize_linear_are_quantized_as_onnxruntime_does(tmp_path):
    """PyTorch's QDQ export keeps weights float, with QuantizeLinear -> DequantizeLinear after them."""
    rng = np.random.default_rng(9)
    fp32, _ = RECIPES["toy"]()
    model = onnx.load(quantize_qdq(fp32, rng.normal(0, 1, (4, 3, 32, 32)), tmp_path))
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in [n for n in model.graph.node if n.op_type == "DequantizeLinear" and constants.get(n.input[0])
                 is not None and constants[n.input[0]].data_type == TensorProto.INT8]:
        codes, scale = (numpy_helper.to_array(constants[name]) for name in node.input[:2])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [-1 if i == axis else 1 for i in range(codes.ndim)] if scale.size > 1 else []
        floats = numpy_helper.from_array(codes.astype(np.float32) * scale.reshape(shape), f"{node.input[0]}_float")
        constants[node.input[0]].CopyFrom(floats)
        model.graph.node.insert(0, helper.make_node("QuantizeLinear", [floats.name, *node.input[1:3]], [node.input[0]],
                                                    name=f"{node.name}_weights", axis=axis))
    path = tmp_path / "float-weights.onnx"
    onnx.save(model, path)
    assert sum(node.op_type == "QuantizeLinear" for node in model.graph.node) > 3
    converted = from_qlinear_graph(fold_qdq(import_onnx(str(path))))
    assert_bit_exact(converted, path, rng.normal(0, 1, (3, 3, 32, 32)).astype(np.float32))


def test_a_quantize_linear_straight_after_a_dequantize_linear_requantizes_as_the_graph_says(tmp_path):
    """onnxruntime's optimizer replaces such a pair by one QuantizeLinear with recomputed parameters (its
    DoubleQDQPairsRemover): mvu computes the graph as written, as onnxruntime does with optimizations off."""
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in (
        ("s", np.float32(0.031)), ("z", np.uint8(120)), ("s2", np.float32(0.017)), ("z2", np.uint8(30)))]
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q0"], name="q0"),
             helper.make_node("DequantizeLinear", ["q0", "s", "z"], ["d0"], name="d0"),
             helper.make_node("QuantizeLinear", ["d0", "s2", "z2"], ["q1"], name="q1"),
             helper.make_node("DequantizeLinear", ["q1", "s2", "z2"], ["output"], name="d1")]
    graph = helper.make_graph(nodes, "twice", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])], inits)
    path = tmp_path / "twice.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), path)
    model = from_qlinear_graph(fold_qdq(import_onnx(str(path))))
    assert [layer.kind for layer in model.layers] == ["conv", "dequantize"]
    images = np.random.default_rng(10).normal(0, 3, (8, 3, 8, 8)).astype(np.float32)
    as_written = ort.SessionOptions()
    as_written.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert_bit_exact(model, path, images, as_written)
    with pytest.raises(AssertionError):  # when this fails, onnxruntime keeps the pair: say so in docs/compiler.md
        assert_bit_exact(model, path, images)
