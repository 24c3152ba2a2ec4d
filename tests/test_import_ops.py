"""Pad, ceil-mode pooling, channel shuffle, GELU and LayerNormalization: small graphs compiled and compared with
onnxruntime fp32, the integer layers bit for bit between the reference and numpy backends."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import TINY
from onnx import numpy_helper

from mvu.host.compiler.graph import ModelImportError, import_onnx
from mvu.host.compiler.quantize import calibrate, check_graph, quantize_graph
from mvu.host.runtime.runner import ModelRunner
from mvu.models.onnx_builder import GraphBuilder

SIZE = 12


def network(body, seed=0, channels=8, size=SIZE):
    """A Conv, ``body(g, x, rng)``, global average pooling and a classifier of 10 classes."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder("ops", (1, 3, size, size))
    x = g.conv("input", rng.normal(0, 0.4, (channels, 3, 3, 3)), rng.normal(0, 0.1, channels), padding=1)
    x = body(g, x, rng)
    x = g.flatten(g.global_average_pool(x))
    return g.build(g.gemm(x, rng.normal(0, 0.3, (10, channels)), rng.normal(0, 0.1, 10)), classes=10)


def images(count, seed, size):
    return np.random.default_rng(seed).normal(0, 1, (count, 3, size, size)).astype(np.float32)


def compile_and_run(model, *, tensor=None, size=SIZE):
    """Compile ``model`` calibrated on 16 images, run 4 others on numpy and reference; returns the quantized model
    and the SQNR (dB) of the logits (or of ``tensor``) against onnxruntime fp32."""
    graph = import_onnx(model)
    check_graph(graph)
    calibration, tests = images(16, 1, size), images(4, 2, size)
    quantized = quantize_graph(graph, calibrate(model, graph, calibration, progress=False))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    name = tensor or quantized.output
    if tensor:
        probe.graph.output.append(onnx.ValueInfoProto(name=tensor))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = np.concatenate([dict(zip([o.name for o in session.get_outputs()],
                                        session.run(None, {"input": image[None]})))[name] for image in tests])
    runs = []
    for backend in ("numpy", "reference"):
        runner = ModelRunner(quantized, TINY, backend)
        runner.run_batch(quantized.input_q.quantize(tests))
        runs.append(runner.tensors)
    for layer in quantized.layers:
        np.testing.assert_array_equal(runs[1][layer.output], runs[0][layer.output], err_msg=layer.name)
    got = runs[0][name] if quantized.output == name else quantized.tensor_q[name].dequantize(runs[0][name])
    assert got.shape == expected.shape
    noise = np.sum((expected.astype(np.float64) - got) ** 2)
    return quantized, float(10 * np.log10(np.sum(expected.astype(np.float64) ** 2) / noise))


def kinds(quantized):
    return [layer.kind for layer in quantized.layers]


def pad(g, x, pads, value=None, mode="constant"):
    inputs = [x, g.constant(np.array(pads, np.int64), "pads")]
    if value is not None:
        inputs.append(g.constant(np.float32(value), "value"))
    return g.node("Pad", inputs, mode=mode)


def test_tf_same_padding_folds_into_the_convolution():
    """TF "same" for a 3x3 stride-2 convolution on an even size: one row and column after, none before."""
    def body(g, x, rng):
        x = pad(g, g.relu(x), [0, 0, 0, 0, 0, 0, 1, 1], 0.0)
        return g.relu(g.conv(x, rng.normal(0, 0.3, (8, 8, 3, 3)), rng.normal(0, 0.1, 8), stride=2))
    quantized, sqnr = compile_and_run(network(body))
    assert "pad" not in kinds(quantized)
    conv = [layer for layer in quantized.layers if layer.kind == "conv"][1]
    assert conv.attrs["pads"] == [0, 0, 1, 1]
    assert sqnr > 38, sqnr


@pytest.mark.parametrize("mode,value", [("constant", 0.25), ("reflect", None), ("edge", None)])
def test_a_pad_the_convolution_cannot_absorb_runs_on_the_host(mode, value):
    def body(g, x, rng):
        x = pad(g, g.relu(x), [0, 0, 1, 2, 0, 0, 2, 1], value, mode)
        return g.conv(x, rng.normal(0, 0.3, (8, 8, 3, 3)), rng.normal(0, 0.1, 8))
    quantized, sqnr = compile_and_run(network(body))
    assert "pad" in kinds(quantized)
    assert sqnr > 38, sqnr


@pytest.mark.parametrize("value", [0.0, 0.25])
def test_an_opset_10_pad_states_its_pads_as_attributes(value, monkeypatch):
    monkeypatch.setattr("mvu.models.onnx_builder.OPSET", 10)

    def body(g, x, rng):
        x = g.node("Pad", [g.relu(x)], mode="constant", pads=[0, 0, 0, 0, 0, 0, 1, 1], value=value)
        return g.relu(g.conv(x, rng.normal(0, 0.3, (8, 8, 3, 3)), rng.normal(0, 0.1, 8), stride=2))
    model = network(body)
    assert model.opset_import[0].version == 10
    quantized, sqnr = compile_and_run(model)
    assert ("pad" in kinds(quantized)) == bool(value)
    assert sqnr > 38, sqnr


def test_a_pad_before_max_pooling_pads_with_the_quantized_value():
    def body(g, x, rng):
        return g.max_pool(pad(g, x, [0, 0, 1, 1, 0, 0, 1, 1], -0.5), 3, 2)
    quantized, sqnr = compile_and_run(network(body))
    layer = next(layer for layer in quantized.layers if layer.kind == "pad")
    q = quantized.tensor_q[layer.inputs[0]]
    assert layer.attrs["value"] == round(-0.5 / q.scale) + q.zero_point
    assert sqnr > 38, sqnr


def pool_model(op, kernel, stride, pads, size, **attrs):
    def body(g, x, rng):
        return g.node(op, [x], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pads] * 4, ceil_mode=1,
                      **attrs)
    return network(body, size=size)


@pytest.mark.parametrize("op,kernel,stride,pads,size,attrs", [
    ("MaxPool", 3, 2, 0, 12, {}),  # ceil and floor differ (6 and 5)
    ("MaxPool", 3, 2, 0, 13, {}),  # and agree (6)
    ("MaxPool", 3, 3, 1, 8, {}),  # ceil's last window would start in the padding: onnxruntime drops it
    ("AveragePool", 3, 2, 1, 12, {"count_include_pad": 1}),
    ("AveragePool", 3, 2, 1, 12, {"count_include_pad": 0}),
    ("AveragePool", 2, 2, 1, 11, {"count_include_pad": 1}),
])
def test_ceil_mode_pools_as_onnxruntime_does(op, kernel, stride, pads, size, attrs):
    model = pool_model(op, kernel, stride, pads, size, **attrs)
    pooled = next(n.output[0] for n in model.graph.node if n.op_type == op)
    quantized, sqnr = compile_and_run(model, tensor=pooled, size=size)
    assert sqnr > (38 if op == "MaxPool" else 32), sqnr


def shuffle(g, x, groups):
    """ShuffleNet's channel shuffle: [N, g, C/g, H, W], groups and channels swapped, back to [N, C, H, W]."""
    n, c, h, w = 1, 8, SIZE, SIZE
    x = g.node("Reshape", [x, g.constant(np.array([n, groups, c // groups, h, w], np.int64), "shape")])
    x = g.node("Transpose", [x], perm=[0, 2, 1, 3, 4])
    return g.node("Reshape", [x, g.constant(np.array([n, c, h, w], np.int64), "shape")])


def test_a_channel_shuffle_permutes_channels_on_the_host():
    def body(g, x, rng):
        x = shuffle(g, g.relu(x), 2)
        return g.conv(x, rng.normal(0, 0.3, (8, 1, 3, 3)), rng.normal(0, 0.1, 8), padding=1, group=8)
    model = network(body)
    shuffled = [n.output[0] for n in model.graph.node if n.op_type == "Reshape"][1]
    quantized, sqnr = compile_and_run(model, tensor=shuffled)
    assert kinds(quantized)[1:4] == ["reshape", "transpose", "reshape"]
    assert sqnr > 36, sqnr


def test_ops_of_constants_are_folded_before_the_support_check():
    """A Transpose of weights, and an Erf and an Abs (operators mvu does not take) of constants: folded, not
    refused."""
    rng = np.random.default_rng(0)
    g = GraphBuilder("folded", (1, 3, SIZE, SIZE))
    x = g.flatten(g.global_average_pool(g.conv("input", rng.normal(0, 0.4, (8, 3, 3, 3)))))
    weight = g.node("Abs", [g.node("Erf", [g.constant(rng.normal(0, 0.3, (10, 8)).astype(np.float32), "w")])])
    weight = g.node("Transpose", [weight], perm=[1, 0])
    model = g.build(g.node("MatMul", [x, weight]), classes=10)
    graph = import_onnx(model)
    assert [n.op for n in graph.nodes] == ["Conv", "GlobalAveragePool", "Flatten", "MatMul"]


def gelu_erf(g, x, half_first, constant_nodes=False):
    """PyTorch's exports of ``x * 0.5 * (1 + erf(x / sqrt 2))``: nn.GELU's (halving last, dividing by sqrt 2) or
    the formula's (halving first, multiplying by 1 / sqrt 2), constants as initializers or Constant nodes."""
    def constant(value):
        value = np.float32(value)
        return g.node("Constant", [], "c", value=numpy_helper.from_array(value)) if constant_nodes else \
            g.constant(value)
    scaled = g.node("Mul", [x, constant(np.sqrt(0.5))]) if half_first else g.node("Div", [x, constant(np.sqrt(2))])
    one_plus = g.node("Add", [g.node("Erf", [scaled]), constant(1)])
    if half_first:
        return g.node("Mul", [g.node("Mul", [x, constant(0.5)]), one_plus])
    return g.node("Mul", [g.node("Mul", [x, one_plus]), constant(0.5)])


@pytest.mark.parametrize("half_first", [False, True])
@pytest.mark.parametrize("constant_nodes", [False, True])
def test_gelu_in_its_erf_form_is_a_table_in_the_convolutions_store(half_first, constant_nodes):
    def body(g, x, rng):
        x = gelu_erf(g, x, half_first, constant_nodes)
        return g.conv(x, rng.normal(0, 0.3, (8, 8, 1, 1)), rng.normal(0, 0.1, 8))
    model = network(body)
    graph = import_onnx(model)
    assert "Erf" not in [n.op for n in graph.nodes] and "Gelu" in [n.op for n in graph.nodes]
    gelu = next(n.outputs[0] for n in graph.nodes if n.op == "Gelu")
    quantized, sqnr = compile_and_run(model, tensor=gelu)
    assert "lut" not in kinds(quantized) and "table" in quantized.layers[0].arrays  # fused into the first Conv
    assert sqnr > 33, sqnr


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_an_opset_20_gelu_node(approximate, monkeypatch):
    monkeypatch.setattr("mvu.models.onnx_builder.OPSET", 20)

    def body(g, x, rng):
        return g.node("Gelu", [x], approximate=approximate)
    model = network(body)
    gelu = next(n for n in model.graph.node if n.op_type == "Gelu")
    quantized, sqnr = compile_and_run(model, tensor=gelu.output[0])
    table = next(layer for layer in quantized.layers if "table" in layer.arrays)  # the Conv the table fused into
    assert sqnr > 33, sqnr
    # The table is onnxruntime's Gelu of each input code's value, quantized: the two forms differ in some codes.
    codes = quantized.tensor_q[gelu.input[0]].dequantize(np.arange(256))
    node = onnx.helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)
    single = onnx.helper.make_model(onnx.helper.make_graph(
        [node], "gelu", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [256])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [256])]),
        opset_imports=[onnx.helper.make_opsetid("", 20)])
    values = ort.InferenceSession(single.SerializeToString()).run(None, {"x": codes})[0]
    np.testing.assert_array_equal(table.arrays["table"], table.out_q.quantize(values))


def test_an_erf_outside_gelu_is_still_refused():
    def body(g, x, rng):
        return g.node("Erf", [x])
    with pytest.raises(ModelImportError, match=r"cannot import 1 node: Erf \(node 'erf_"):
        import_onnx(network(body))


def convnext_block(g, x, rng, channels=8):
    """ConvNeXt's block as PyTorch exports it: depthwise 7x7, to NHWC, LayerNorm, Linear (MatMul + Add) to 4x the
    channels, GELU, Linear back, the layer scale (a Mul), to NCHW, the residual Add."""
    def linear(y, inputs, outputs):
        y = g.node("MatMul", [y, g.constant(rng.normal(0, 0.3, (inputs, outputs)).astype(np.float32), "w")])
        return g.node("Add", [y, g.constant(rng.normal(0, 0.1, outputs).astype(np.float32), "b")])
    y = g.conv(x, rng.normal(0, 0.2, (channels, 1, 7, 7)), rng.normal(0, 0.1, channels), padding=3, group=channels)
    y = g.node("Transpose", [y], perm=[0, 2, 3, 1])
    y = g.node("LayerNormalization", [y, g.constant(rng.uniform(0.5, 1.5, channels).astype(np.float32), "gamma"),
                                      g.constant(rng.normal(0, 0.1, channels).astype(np.float32), "beta")], axis=-1,
               epsilon=1e-6)
    y = linear(gelu_erf(g, linear(y, channels, 4 * channels), False), 4 * channels, channels)
    y = g.node("Mul", [y, g.constant(rng.uniform(0.5, 1.5, channels).astype(np.float32), "layer_scale")])
    return g.add(x, g.node("Transpose", [y], perm=[0, 3, 1, 2]))


def test_a_convnext_block_runs_its_channels_last_linear_layers_on_the_accelerator():
    model = network(convnext_block)
    block = [n.output[0] for n in model.graph.node if n.op_type == "Add"][-1]
    quantized, sqnr = compile_and_run(model, tensor=block)
    assert kinds(quantized)[1:] == ["conv", "transpose", "layernorm", "fc_quantized", "fc_quantized",
                                    "transpose", "add", "gap", "reshape", "fc"]  # GELU in the first Linear's STORE
    pointwise = [layer for layer in quantized.layers if layer.attrs.get("pointwise")]
    assert [layer.placement for layer in pointwise] == ["accelerator"] * 2
    assert sqnr > 32, sqnr


def layer_normalized(axis: int):
    """A network body: LayerNormalization over C, H, W (NCHW, axis 1) or over the channels of an NHWC tensor
    (axis -1, transposed there and back)."""
    def body(g, x, rng):
        shape = (8, SIZE, SIZE) if axis == 1 else (8,)
        if axis == -1:
            x = g.node("Transpose", [x], perm=[0, 2, 3, 1])
        x = g.node("LayerNormalization", [x, g.constant(rng.uniform(0.5, 1.5, shape).astype(np.float32), "gamma"),
                                          g.constant(rng.normal(0, 0.1, shape).astype(np.float32), "beta")],
                   axis=axis)
        return x if axis == 1 else g.node("Transpose", [x], perm=[0, 3, 1, 2])
    return body


@pytest.mark.parametrize("axis", [1, -1])
def test_layer_normalization_on_the_host(axis):
    """Over channels, height and width (NCHW, axis 1) and over the channels of an NHWC tensor (axis -1)."""
    model = network(layer_normalized(axis))
    normalized = next(n.output[0] for n in model.graph.node if n.op_type == "LayerNormalization")
    quantized, sqnr = compile_and_run(model, tensor=normalized)
    assert "layernorm" in kinds(quantized)
    assert sqnr > 32, sqnr


@pytest.mark.parametrize("case", ["pad", "reflect", "ceil_max", "ceil_average", "shuffle"])
def test_qdq_forms_run_as_onnxruntime_runs_them(case, tmp_path):
    """The ops quantized by onnxruntime (QDQ): Pad, ceil-mode pools and the shuffle run on the codes, bit for bit
    with onnxruntime's QDQ session; average pooling within one code (docs/compiler.md), its ceil-mode window
    divided by the whole kernel as QLinearAveragePool does with count_include_pad."""
    from qdq_models import quantize_qdq

    from mvu.host.compiler.prequantized import from_qlinear_graph
    from mvu.host.compiler.qdq import fold_qdq

    bodies = {"pad": lambda g, x, rng: g.max_pool(pad(g, x, [0, 0, 1, 1, 0, 0, 1, 1], -0.5), 3, 2),
              "reflect": lambda g, x, rng: g.max_pool(pad(g, x, [0, 0, 1, 2, 0, 0, 2, 1], mode="reflect"), 3, 2),
              "ceil_max": lambda g, x, rng: g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[3, 3], pads=[1] * 4,
                                                   ceil_mode=1),
              "ceil_average": lambda g, x, rng: g.node("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2],
                                                       pads=[1] * 4, ceil_mode=1, count_include_pad=1),
              "shuffle": lambda g, x, rng: shuffle(g, g.relu(x), 2)}
    size = 8 if case == "ceil_max" else SIZE  # 8: the last ceil-mode window would start in the padding
    path = quantize_qdq(network(bodies[case], size=size), images(8, 1, size), tmp_path)
    model = from_qlinear_graph(fold_qdq(import_onnx(str(path))))
    kind = {"pad": "pad", "reflect": "pad", "ceil_max": "maxpool", "ceil_average": "avgpool", "shuffle": "transpose"}[case]
    layer = next(layer for layer in model.layers if layer.kind == kind)
    probe = onnx.load(path)
    written = layer.output if case == "ceil_average" else model.output  # the pool's QuantizeLinear: its codes
    probe.graph.output.append(onnx.ValueInfoProto(name=written))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    tests = images(4, 2, size)
    expected = np.concatenate([session.run([written], {"input": image[None]})[0] for image in tests])
    runners = [ModelRunner(model, TINY, backend) for backend in ("numpy", "reference")]
    outputs = [runner.run_batch(model.input_q.quantize(tests)) for runner in runners]
    np.testing.assert_array_equal(outputs[1], outputs[0])
    if case == "ceil_average":
        assert np.abs(runners[0].tensors[layer.output].astype(int) - expected).max() <= 1
    else:
        np.testing.assert_array_equal(outputs[0], expected)


@pytest.mark.parametrize("axis", [1, -1])
def test_qdq_layer_normalization_runs_on_the_host_within_one_code_of_onnxruntime(axis, tmp_path):
    """onnxruntime's QDQ session dequantizes, normalizes in float32 and quantizes; mvu normalizes in float64 on the
    host: the normalization's codes within one of onnxruntime's. (Per-tensor weights where the scale spans C, H
    and W: onnxruntime's per-channel quantizer fails on such a scale.)"""
    from qdq_models import quantize_qdq

    from mvu.host.compiler.prequantized import from_qlinear_graph
    from mvu.host.compiler.qdq import fold_qdq

    path = quantize_qdq(network(layer_normalized(axis)), images(8, 1, SIZE), tmp_path, per_channel=axis == -1)
    model = from_qlinear_graph(fold_qdq(import_onnx(str(path))))
    layer = next(layer for layer in model.layers if layer.kind == "layernorm")
    assert layer.placement == "host"
    probe = onnx.load(path)
    probe.graph.output.append(onnx.ValueInfoProto(name=layer.output))  # its QuantizeLinear's codes
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    tests = images(4, 2, SIZE)
    expected = np.concatenate([session.run([layer.output], {"input": image[None]})[0] for image in tests])
    runners = [ModelRunner(model, TINY, backend) for backend in ("numpy", "reference")]
    outputs = [runner.run_batch(model.input_q.quantize(tests)) for runner in runners]
    np.testing.assert_array_equal(outputs[1], outputs[0])
    assert np.abs(runners[0].tensors[layer.output].astype(int) - expected).max() <= 1
