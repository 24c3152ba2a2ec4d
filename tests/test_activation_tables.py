"""Elementwise activations as 256-entry tables: imported from float graphs, fused into the STORE of the product
that feeds them where it alone reads that product (on the accelerator), else run on the host; compared with
onnxruntime fp32, between the numpy and reference backends, and once with the RTL."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import TINY
from onnx import TensorProto, helper, numpy_helper
from test_import_ops import compile_and_run, gelu_erf, images, kinds, network

from mvu.host.compiler.fuse_tables import FUSED_TABLE
from mvu.host.compiler.graph import import_onnx
from mvu.host.compiler.prequantized import from_qlinear_graph
from mvu.host.compiler.quantize import TABLE_FUNCTIONS, calibrate, quantize_graph
from mvu.host.runtime.runner import ModelRunner


def silu(g, x):
    return g.node("Mul", [x, g.node("Sigmoid", [x])])


def hard_swish_gated(g, x):
    return g.node("Mul", [g.node("HardSigmoid", [x], alpha=1 / 6, beta=0.5), x])


#: Activation -> (how the graph writes it, the op it imports as, the least SQNR in dB of its output).
ACTIVATIONS = {
    "Sigmoid": (lambda g, x: g.node("Sigmoid", [x]), "Sigmoid", 39),
    "HardSigmoid": (lambda g, x: g.node("HardSigmoid", [x], alpha=0.25, beta=0.4), "HardSigmoid", 39),
    "HardSwish": (lambda g, x: g.node("HardSwish", [x]), "HardSwish", 33),
    "x*HardSigmoid(x)": (hard_swish_gated, "HardSwish", 33),
    "Tanh": (lambda g, x: g.node("Tanh", [x]), "Tanh", 33),
    "LeakyRelu": (lambda g, x: g.node("LeakyRelu", [x], alpha=0.1), "LeakyRelu", 33),
    "SiLU": (silu, "Swish", 33),
}


def activation_model(activation, *, fused: bool = True):
    """The first convolution, then ``activation`` (right after it, or after an Add of it to itself, which keeps the
    table on the host), a 1x1 convolution, pooling and a classifier; and the activation's output name."""
    write = ACTIVATIONS[activation][0]
    names = []

    def body(g, x, rng):
        y = write(g, x if fused else g.add(x, x))
        names.append(y)
        return g.conv(y, rng.normal(0, 0.3, (8, 8, 1, 1)), rng.normal(0, 0.1, 8))
    return network(body), names[0]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_an_activation_after_a_convolution_runs_in_its_store(activation):
    model, output = activation_model(activation)
    graph = import_onnx(model)
    ops = {n.op for n in graph.nodes}
    assert ACTIVATIONS[activation][1] in ops
    if activation in ("SiLU", "x*HardSigmoid(x)"):  # the gate and its Mul became one node
        assert not {"Mul", "Sigmoid", "HardSigmoid"} & ops, ops
    quantized, sqnr = compile_and_run(model, tensor=output)
    print(f"{activation}: SQNR {sqnr:.1f} dB (fused)")
    assert "lut" not in kinds(quantized)
    conv = next(layer for layer in quantized.layers if layer.output == output)
    assert conv.kind == "conv" and conv.placement == "accelerator" and conv.arrays["table"].shape == (256,)
    row = next(row for row in quantized.report if row["op"] == f"{ACTIVATIONS[activation][1]} (table)")
    assert row["placement"] == FUSED_TABLE
    assert sqnr > ACTIVATIONS[activation][2], sqnr


@pytest.mark.parametrize("activation", ["Sigmoid", "SiLU"])
def test_an_activation_that_no_product_alone_feeds_stays_on_the_host(activation):
    model, output = activation_model(activation, fused=False)
    quantized, sqnr = compile_and_run(model, tensor=output)
    print(f"{activation}: SQNR {sqnr:.1f} dB (host)")
    assert "lut" in kinds(quantized)
    assert not any("table" in layer.arrays for layer in quantized.layers if layer.kind == "conv")
    row = next(row for row in quantized.report if row["op"] == f"{ACTIVATIONS[activation][1]} (table)")
    assert row["placement"] == "host"
    assert sqnr > ACTIVATIONS[activation][2], sqnr


def test_tables_follow_the_onnx_definitions():
    """Each function at a few points, against the formulas of the ONNX operator specifications."""
    x = np.array([-8.0, -1.0, 0.0, 0.5, 3.0, 7.0])
    sigmoid = 1 / (1 + np.exp(-x))
    expected = {"Sigmoid": sigmoid, "Tanh": np.tanh(x), "Swish": x * sigmoid,
                "HardSigmoid": np.clip(0.2 * x + 0.5, 0, 1), "HardSwish": x * np.clip(x / 6 + 0.5, 0, 1),
                "LeakyRelu": np.where(x < 0, 0.01 * x, x)}
    for op, values in expected.items():
        np.testing.assert_allclose(TABLE_FUNCTIONS[op](x, {}), values, rtol=1e-12, atol=1e-15, err_msg=op)


def same_on_reference_and_rtl(quantized, verilator_executors) -> dict:
    """Runs two images through ``quantized`` on reference and verilator (TINY), checks every layer's output is
    the same on both, and returns verilator's tensors."""
    batch = quantized.input_q.quantize(images(2, 3, 12))
    runs = []
    for backend, executor in (("reference", None), ("verilator", verilator_executors(TINY))):
        runner = ModelRunner(quantized, TINY, backend, executor)
        runner.run_batch(batch)
        runs.append(runner.tensors)
    for layer in quantized.layers:
        np.testing.assert_array_equal(runs[1][layer.output], runs[0][layer.output], err_msg=layer.name)
    return runs[1]


def test_a_fused_table_is_bit_exact_on_the_rtl(verilator_executors):
    model, output = activation_model("SiLU")
    graph = import_onnx(model)
    quantized = quantize_graph(graph, calibrate(model, graph, images(8, 1, 12), progress=False))
    tensors = same_on_reference_and_rtl(quantized, verilator_executors)
    assert len(np.unique(tensors[output])) > 16  # the table's output varies


def test_compile_lists_where_each_table_runs(tmp_path, capsys):
    """`mvu compile -v`: a SiLU fused into its convolution is listed on the accelerator, one after an Add on the
    host."""
    import json

    from mvu.host.tools.cli import main

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"resize": 12, "crop": 12, "mean": [127.5] * 3, "std": [64.0] * 3}))
    listings = {}
    for fused in (True, False):
        path = tmp_path / f"silu-{fused}.onnx"
        onnx.save(activation_model("SiLU", fused=fused)[0], path)
        labels = tmp_path / "labels.txt"
        labels.write_text("\n".join(f"class {i}" for i in range(10)))
        assert main(["compile", str(path), "-o", str(tmp_path / "m.mvu"), "-v", "--preprocess", str(recipe),
                     "--labels", str(labels)]) == 0
        listings[fused] = next(line for line in capsys.readouterr().out.splitlines() if "Swish (table)" in line)
    assert "-> accelerator (fused table)" in listings[True] and "SQNR" in listings[True]  # its output's, measured
    assert "-> host" in listings[False]


def qoperator_network(signed: bool, seed: int = 0) -> onnx.ModelProto:
    """QuantizeLinear -> QLinearConv -> QLinearSigmoid (fused into that convolution) -> QLinearConv, QLinearAdd of
    the two -> QLinearLeakyRelu (on the host: an Add feeds it) -> QLinearGlobalAveragePool -> Reshape ->
    QLinearMatMul -> DequantizeLinear; int8 or uint8 activations, per-channel int8 weights."""
    rng = np.random.default_rng(seed)
    inits = []
    code = np.int8 if signed else np.uint8

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def scale_zp(prefix, scale, zero):
        return const(f"{prefix}_s", np.float32(scale)), const(f"{prefix}_z", code(zero - 128 * signed))

    def weights(name, shape, channels, low, high):
        return (const(name, rng.integers(-127, 128, shape, dtype=np.int8)),
                const(f"{name}_s", rng.uniform(low, high, channels).astype(np.float32)),
                const(f"{name}_z", np.zeros(channels, np.int8)))

    x, a, s, b, c, r, g, o = (scale_zp(*args) for args in (
        ("x", 0.02, 128), ("a", 0.05, 120), ("s", 1 / 255, 0), ("b", 0.04, 100), ("c", 0.06, 50),
        ("r", 0.05, 30), ("g", 0.03, 10), ("o", 0.1, 120)))
    shape = const("shape", np.array([1, 8], np.int64))
    nodes = [
        helper.make_node("QuantizeLinear", ["input", *x], ["xq"]),
        helper.make_node("QLinearConv", ["xq", *x, *weights("w1", (8, 3, 3, 3), 8, 0.002, 0.01), *a], ["aq"],
                         pads=[1, 1, 1, 1]),
        helper.make_node("QLinearSigmoid", ["aq", *a, *s], ["sq"], domain="com.microsoft"),
        helper.make_node("QLinearConv", ["sq", *s, *weights("w2", (8, 8, 1, 1), 8, 0.002, 0.01), *b], ["bq"]),
        helper.make_node("QLinearAdd", ["sq", *s, "bq", *b, *c], ["cq"], domain="com.microsoft"),
        helper.make_node("QLinearLeakyRelu", ["cq", *c, *r], ["rq"], domain="com.microsoft", alpha=0.2),
        helper.make_node("QLinearGlobalAveragePool", ["rq", *r, *g], ["gq"], domain="com.microsoft", channels_last=0),
        helper.make_node("Reshape", ["gq", shape], ["fq"]),
        helper.make_node("QLinearMatMul", ["fq", *g, *weights("w3", (8, 10), 10, 0.01, 0.03), *o], ["oq"]),
        helper.make_node("DequantizeLinear", ["oq", *o], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "qoperator", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("signed", [False, True], ids=["uint8", "int8"])
def test_qoperator_tables_equal_onnxruntime_bit_for_bit(signed, verilator_executors):
    model = qoperator_network(signed)
    quantized = from_qlinear_graph(import_onnx(model))
    assert kinds(quantized) == ["conv", "conv", "add", "lut", "gap", "reshape", "fc_quantized", "dequantize"]
    assert "table" in quantized.layers[0].arrays
    placements = {row["op"]: row["placement"] for row in quantized.report}
    assert placements["QLinearSigmoid (table)"] == FUSED_TABLE and placements["QLinearLeakyRelu (table)"] == "host"
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in ("sq", "rq"))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(4).normal(0, 1, (3, 1, 3, 8, 8)).astype(np.float32)
    runners = [ModelRunner(quantized, TINY, "numpy"), ModelRunner(quantized, TINY, "reference"),
               ModelRunner(quantized, TINY, "verilator", verilator_executors(TINY))]
    for image in images:
        expected = dict(zip(["logits", "sq", "rq"], session.run(None, {"input": image})))
        for runner in runners:
            np.testing.assert_array_equal(runner.run(quantized.input_q.quantize(image)), expected["logits"])
            for name in ("sq", "rq"):  # the tables' outputs, as codes (int8 ones plus 128)
                codes = (expected[name].astype(np.int16) + 128 * signed).astype(np.uint8)
                np.testing.assert_array_equal(runner.tensors[name], codes, err_msg=f"{name} on {runner.backend}")


@pytest.mark.parametrize("activation", ["Sigmoid", "LeakyRelu"])
@pytest.mark.parametrize("codes", ["QUInt8", "QInt8"])
def test_qdq_tables_equal_onnxruntime_bit_for_bit(activation, codes, tmp_path):
    """A Sigmoid or LeakyRelu between DequantizeLinear and QuantizeLinear (onnxruntime's quantize_static) becomes
    its QLinear table, fused into the convolution before it; outputs equal onnxruntime's QDQ session's."""
    from onnxruntime.quantization import QuantType
    from qdq_models import quantize_qdq

    from mvu.host.compiler.qdq import fold_qdq

    path = quantize_qdq(activation_model(activation)[0], images(8, 1, 12), tmp_path,
                        activations=getattr(QuantType, codes))
    quantized = from_qlinear_graph(fold_qdq(import_onnx(path)))
    placements = {row["op"]: row["placement"] for row in quantized.report}
    assert placements[f"QLinear{activation} (table)"] == FUSED_TABLE
    assert_equals_onnxruntime(path, quantized)


def assert_equals_onnxruntime(path, quantized) -> None:
    """16 images through onnxruntime's session of the model at ``path`` and through ``quantized`` on numpy and
    reference: the outputs are equal."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = images(16, 7, 12)
    expected = np.concatenate([session.run(None, {"input": image[None]})[0] for image in batch])
    for backend in ("numpy", "reference"):
        got = ModelRunner(quantized, TINY, backend).run_batch(quantized.input_q.quantize(batch))
        np.testing.assert_array_equal(got, expected, err_msg=backend)


def mbconv(g, x, rng, channels=8, squeezed=4):
    """EfficientNet-B0's MBConv block as PyTorch exports it: 1x1 expansion with SiLU, depthwise 3x3 with SiLU,
    squeeze-excite (global pooling, 1x1 with SiLU, 1x1 with Sigmoid, Mul), 1x1 projection; and the gated tensor."""
    expanded = 2 * channels
    y = silu(g, g.conv(x, rng.normal(0, 0.3, (expanded, channels, 1, 1)), rng.normal(0, 0.1, expanded)))
    y = silu(g, g.conv(y, rng.normal(0, 0.3, (expanded, 1, 3, 3)), rng.normal(0, 0.1, expanded), padding=1,
                       group=expanded))
    s = silu(g, g.conv(g.global_average_pool(y), rng.normal(0, 0.5, (squeezed, expanded, 1, 1)),
                       rng.normal(0, 0.1, squeezed)))
    s = g.node("Sigmoid", [g.conv(s, rng.normal(0, 0.5, (expanded, squeezed, 1, 1)), rng.normal(0, 0.1, expanded))])
    y = g.node("Mul", [y, s])
    return g.conv(y, rng.normal(0, 0.3, (channels, expanded, 1, 1)), rng.normal(0, 0.1, channels)), y


def test_a_squeeze_excite_block_scales_channels_on_the_host():
    names = []

    def body(g, x, rng):
        names.extend(mbconv(g, x, rng))
        return names[0]
    model = network(body)
    block, gated = names
    quantized, sqnr = compile_and_run(model, tensor=block)
    sqnr_gated = compile_and_run(model, tensor=gated)[1]
    print(f"MBConv with squeeze-excite: SQNR {sqnr_gated:.1f} dB (gated tensor), {sqnr:.1f} dB (block output)")
    report = {row["layer"]: row for row in quantized.report}
    gate = next(layer for layer in quantized.layers if layer.kind == "channel_scale")
    assert report[gate.name]["placement"] == "host" and report[gate.name]["op"] == "Mul (per-channel gate)"
    tables = [row["placement"] for row in quantized.report if row["op"].endswith("(table)")]
    # SiLU after the expansion, the depthwise and the squeeze's 1x1, and the gate's Sigmoid fuse.
    assert tables == [FUSED_TABLE] * 4, tables
    assert sqnr_gated > 29 and sqnr > 27, (sqnr_gated, sqnr)  # the depthwise SiLU before the gate: 30.3 dB


#: Activations onnxruntime has no QLinear kernel for -> (how the graph writes it, its opset).
QDQ_REGIONS = {
    "HardSigmoid": (ACTIVATIONS["HardSigmoid"][0], 17),
    "HardSwish": (ACTIVATIONS["HardSwish"][0], 17),  # inlined by quant_pre_process: HardSigmoid, QDQ, Mul
    "Tanh": (ACTIVATIONS["Tanh"][0], 17),
    "GELU (Erf, halving last)": (lambda g, x: gelu_erf(g, x, False), 17),  # Add and Muls quantized inside
    "GELU (Erf, halving first)": (lambda g, x: gelu_erf(g, x, True), 17),
    "Gelu": (lambda g, x: g.node("Gelu", [x]), 20),
    "Gelu (tanh)": (lambda g, x: g.node("Gelu", [x], approximate="tanh"), 20),
}


def qdq_region_model(activation: str, codes: str, folder, monkeypatch):
    """``activation`` after the first convolution, quantized by onnxruntime's quantize_static (QDQ)."""
    from onnxruntime.quantization import QuantType
    from qdq_models import quantize_qdq

    write, opset = QDQ_REGIONS[activation]
    monkeypatch.setattr("mvu.models.onnx_builder.OPSET", opset)
    model = network(lambda g, x, rng: g.conv(write(g, x), rng.normal(0, 0.3, (8, 8, 1, 1)), rng.normal(0, 0.1, 8)))
    return quantize_qdq(model, images(8, 1, 12), folder, activations=getattr(QuantType, codes))


@pytest.mark.parametrize("activation", QDQ_REGIONS)
@pytest.mark.parametrize("codes", ["QUInt8", "QInt8"])
def test_qdq_regions_are_onnxruntimes_tables(activation, codes, tmp_path, monkeypatch):
    """Float ops between a DequantizeLinear and a QuantizeLinear that onnxruntime has no QLinear kernel for
    become one table of onnxruntime's results (QuantizeLinear/DequantizeLinear pairs inside included), fused into
    the convolution before it; outputs equal onnxruntime's QDQ session's."""
    from mvu.host.compiler.qdq import fold_qdq

    path = qdq_region_model(activation, codes, tmp_path, monkeypatch)
    quantized = from_qlinear_graph(fold_qdq(import_onnx(path)))
    tables = [row for row in quantized.report if row["op"].endswith("(QDQ table)")]
    assert [row["placement"] for row in tables] == [FUSED_TABLE], quantized.report
    assert_equals_onnxruntime(path, quantized)


def test_a_qdq_table_is_bit_exact_on_the_rtl(verilator_executors, tmp_path, monkeypatch):
    """The inlined HardSwish's table, in its convolution's STORE: every layer equal on reference and verilator."""
    from mvu.host.compiler.qdq import fold_qdq

    quantized = from_qlinear_graph(fold_qdq(import_onnx(qdq_region_model("HardSwish", "QUInt8", tmp_path,
                                                                         monkeypatch))))
    table = next(layer for layer in quantized.layers if "table" in layer.arrays)
    tensors = same_on_reference_and_rtl(quantized, verilator_executors)
    assert len(np.unique(tensors[table.output])) > 16  # the table's output varies


def hand_written_qdq_gelu(signed: bool, seed: int = 0) -> onnx.ModelProto:
    """QuantizeLinear, a Conv between DequantizeLinear and QuantizeLinear (per-channel int8 weights), then GELU's
    Erf form in float between DequantizeLinear and QuantizeLinear (no pairs inside: onnxruntime fuses it into
    its Gelu kernel), then DequantizeLinear; opset 13, 8-bit codes int8 or uint8."""
    rng = np.random.default_rng(seed)
    code = np.int8 if signed else np.uint8
    values = {"s0": np.float32(0.02), "z0": code(128 - 128 * signed), "s1": np.float32(0.03),
              "z1": code(100 - 128 * signed), "s2": np.float32(0.015), "z2": code(20 - 128 * signed),
              "w": rng.integers(-127, 128, (8, 3, 3, 3), dtype=np.int8),
              "ws": rng.uniform(0.002, 0.01, 8).astype(np.float32), "wz": np.zeros(8, np.int8),
              "root2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    node = helper.make_node
    nodes = [node("QuantizeLinear", ["input", "s0", "z0"], ["q0"]), node("DequantizeLinear", ["q0", "s0", "z0"], ["d0"]),
             node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0),
             node("Conv", ["d0", "wf"], ["c"], pads=[1, 1, 1, 1]), node("QuantizeLinear", ["c", "s1", "z1"], ["q1"]),
             node("DequantizeLinear", ["q1", "s1", "z1"], ["x"]), node("Div", ["x", "root2"], ["scaled"]),
             node("Erf", ["scaled"], ["erf"]), node("Add", ["erf", "one"], ["one_plus"]),
             node("Mul", ["x", "one_plus"], ["product"]), node("Mul", ["product", "half"], ["gelu"]),
             node("QuantizeLinear", ["gelu", "s2", "z2"], ["q2"]), node("DequantizeLinear", ["q2", "s2", "z2"], ["output"])]
    graph = helper.make_graph(nodes, "qdq_gelu", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [numpy_helper.from_array(np.asarray(value), name) for name, value in values.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("signed", [False, True], ids=["uint8", "int8"])
def test_a_hand_written_qdq_gelu_is_onnxruntimes_table(signed):
    from mvu.host.compiler.qdq import fold_qdq

    model = hand_written_qdq_gelu(signed)
    quantized = from_qlinear_graph(fold_qdq(import_onnx(model)))
    assert [row["op"] for row in quantized.report if row["placement"] == FUSED_TABLE] == [
        "Div, Erf, Add, Mul, Mul (QDQ table)"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for image in np.random.default_rng(5).normal(0, 1, (3, 1, 3, 8, 8)).astype(np.float32):
        expected = session.run(None, {"input": image})[0]
        for backend in ("numpy", "reference"):
            got = ModelRunner(quantized, TINY, backend).run(quantized.input_q.quantize(image))
            np.testing.assert_array_equal(got.reshape(expected.shape), expected, err_msg=backend)


def test_a_qdq_region_onnxruntime_cannot_run_is_refused_by_name():
    """An Elu with a malformed attribute between DequantizeLinear and QuantizeLinear: no table, no traceback; the
    import names the node."""
    from mvu.host.compiler.graph import ModelImportError

    values = {"s": np.float32(0.03), "z": np.uint8(128), "s2": np.float32(1 / 128), "z2": np.uint8(128)}
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q0"]),
             helper.make_node("DequantizeLinear", ["q0", "s", "z"], ["d0"]),
             helper.make_node("Elu", ["d0"], ["e"], name="elu", alpha="not a number"),
             helper.make_node("QuantizeLinear", ["e", "s2", "z2"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s2", "z2"], ["output"])]
    graph = helper.make_graph(nodes, "elu", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [numpy_helper.from_array(np.asarray(value), name) for name, value in values.items()])
    with pytest.raises(ModelImportError, match=r"elu.onnx: cannot import 1 node: Elu \(node 'elu'\)"):
        import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), name="elu.onnx")


def test_a_mul_by_a_quantized_constant_and_a_relu_are_one_table():
    """``Relu(x * DequantizeLinear(QuantizeLinear(1.5)))`` between DequantizeLinear and QuantizeLinear (the constant
    quantized in the graph, as PyTorch's QDQ export writes it): one table, equal to onnxruntime's output."""
    from mvu.host.compiler.qdq import fold_qdq

    values = {"s": np.float32(0.03), "z": np.uint8(128), "s2": np.float32(1 / 64), "z2": np.uint8(0),
              "k": np.float32(1.5), "ks": np.float32(0.01), "kz": np.uint8(0)}
    node = helper.make_node
    nodes = [node("QuantizeLinear", ["input", "s", "z"], ["q0"]), node("DequantizeLinear", ["q0", "s", "z"], ["d0"]),
             node("QuantizeLinear", ["k", "ks", "kz"], ["kq"]), node("DequantizeLinear", ["kq", "ks", "kz"], ["kd"]),
             node("Mul", ["d0", "kd"], ["m"]), node("Relu", ["m"], ["r"]), node("QuantizeLinear", ["r", "s2", "z2"], ["q1"]),
             node("DequantizeLinear", ["q1", "s2", "z2"], ["output"])]
    graph = helper.make_graph(nodes, "mul", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [numpy_helper.from_array(np.asarray(value), name) for name, value in values.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    quantized = from_qlinear_graph(fold_qdq(import_onnx(model)))
    assert kinds(quantized) == ["lut", "dequantize"] and quantized.report[0]["op"] == "Mul, Relu (QDQ table)"
    image = np.random.default_rng(0).normal(0, 2, (1, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": image})[0]
    got = ModelRunner(quantized, TINY, "reference").run(quantized.input_q.quantize(image))
    np.testing.assert_array_equal(got.reshape(expected.shape), expected)


def layer_scale_nchw(g, x, rng):
    return g.node("Mul", [g.relu(x), g.constant(rng.uniform(0.5, 1.5, (8, 1, 1)).astype(np.float32), "scale")])


def layer_scale_nhwc(g, x, rng):
    """ConvNeXt's: LayerNorm over the channels of an NHWC tensor, then its layer scale (one value per channel)."""
    y = g.node("Transpose", [x], perm=[0, 2, 3, 1])
    y = g.node("LayerNormalization", [y, g.constant(rng.uniform(0.5, 1.5, 8).astype(np.float32), "gamma"),
                                      g.constant(rng.normal(0, 0.1, 8).astype(np.float32), "beta")], axis=-1)
    y = g.node("Mul", [y, g.constant(rng.uniform(0.5, 1.5, 8).astype(np.float32), "scale")])
    return g.node("Transpose", [y], perm=[0, 3, 1, 2])


#: Case -> (the graph after the first Conv, the table layer's axis, its report row).
PER_CHANNEL = {
    "Mul [C, 1, 1]": (layer_scale_nchw, 1, "Mul (QDQ table per channel)"),
    "Mul [C] of NHWC": (layer_scale_nhwc, 3, "Mul (QDQ table per channel)"),
    "Tanh(Mul [C, 1, 1])": (lambda g, x, rng: g.node("Tanh", [layer_scale_nchw(g, x, rng)]), 1,
                            "Mul, Tanh (QDQ table per channel)"),
}


@pytest.mark.parametrize("case", PER_CHANNEL)
@pytest.mark.parametrize("codes", ["QUInt8", "QInt8"])
def test_a_qdq_region_with_one_constant_per_channel_is_a_table_per_channel(case, codes, tmp_path):
    """A Mul by one value per channel between DequantizeLinear and QuantizeLinear (a layer scale, which
    onnxruntime runs as QLinearMul) is one table per channel, made by onnxruntime; on the host (the STOREs look up
    one table), equal to onnxruntime's QDQ session."""
    from onnxruntime.quantization import QuantType
    from qdq_models import quantize_qdq

    from mvu.host.compiler.qdq import fold_qdq

    write, axis, op = PER_CHANNEL[case]
    model = network(lambda g, x, rng: g.conv(write(g, x, rng), rng.normal(0, 0.3, (8, 8, 1, 1)),
                                             rng.normal(0, 0.1, 8)))
    path = quantize_qdq(model, images(8, 1, 12), tmp_path, activations=getattr(QuantType, codes))
    quantized = from_qlinear_graph(fold_qdq(import_onnx(path)))
    table = next(layer for layer in quantized.layers if layer.kind == "lut")
    assert table.arrays["table"].shape == (8, 256) and table.attrs["axis"] == axis
    assert len(np.unique(table.arrays["table"], axis=0)) == 8  # each channel its own
    assert {row["layer"]: (row["op"], row["placement"]) for row in quantized.report}[table.name] == (op, "host")
    assert_equals_onnxruntime(path, quantized)
