"""Models that arrive quantized (QuantizeLinear, QLinearConv, com.microsoft QLinearAdd, ...) keep their own scales."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import TINY
from onnx import TensorProto, helper, numpy_helper

from mvu.host.compiler.graph import ModelImportError, Node, import_onnx
from mvu.host.compiler.prequantized import from_qlinear_graph
from mvu.host.runtime.fused_adds import FUSED_ADD
from mvu.host.runtime.runner import ModelRunner

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def qlinear_network(seed=0) -> onnx.ModelProto:
    """QuantizeLinear -> QLinearConv -> QLinearConv (depthwise) -> QLinearAdd -> QLinearGlobalAveragePool ->
    Reshape -> QLinearMatMul -> DequantizeLinear, with per-channel int8 weights."""
    rng = np.random.default_rng(seed)
    inits = []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def scale_zp(prefix, scale, zero):
        return const(f"{prefix}_s", np.float32(scale)), const(f"{prefix}_z", np.uint8(zero))

    x_s, x_z = scale_zp("x", 0.02, 128)
    a_s, a_z = scale_zp("a", 0.05, 3)
    b_s, b_z = scale_zp("b", 0.04, 100)
    c_s, c_z = scale_zp("c", 0.06, 50)
    g_s, g_z = scale_zp("g", 0.03, 10)
    o_s, o_z = scale_zp("o", 0.1, 120)
    w1 = const("w1", rng.integers(-127, 128, (8, 3, 3, 3), dtype=np.int8))
    w1_s, w1_z = const("w1_s", rng.uniform(0.002, 0.01, 8).astype(np.float32)), const("w1_z", np.zeros(8, np.int8))
    w2 = const("w2", rng.integers(-127, 128, (8, 1, 3, 3), dtype=np.int8))
    w2_s, w2_z = const("w2_s", rng.uniform(0.002, 0.01, 8).astype(np.float32)), const("w2_z", np.zeros(8, np.int8))
    w3 = const("w3", rng.integers(-127, 128, (8, 10), dtype=np.int8))
    w3_s, w3_z = const("w3_s", rng.uniform(0.01, 0.03, 10).astype(np.float32)), const("w3_z", np.zeros(10, np.int8))
    bias1 = const("bias1", rng.integers(-2000, 2000, 8).astype(np.int32))
    shape = const("shape", np.array([1, 8], np.int64))
    nodes = [
        helper.make_node("QuantizeLinear", ["input", x_s, x_z], ["xq"]),
        helper.make_node("QLinearConv", ["xq", x_s, x_z, w1, w1_s, w1_z, a_s, a_z, bias1], ["aq"], pads=[1, 1, 1, 1]),
        helper.make_node("QLinearConv", ["aq", a_s, a_z, w2, w2_s, w2_z, b_s, b_z], ["bq"], pads=[1, 1, 1, 1],
                         group=8),
        helper.make_node("QLinearAdd", ["aq", a_s, a_z, "bq", b_s, b_z, c_s, c_z], ["cq"], domain="com.microsoft"),
        helper.make_node("QLinearGlobalAveragePool", ["cq", c_s, c_z, g_s, g_z], ["gq"], domain="com.microsoft",
                         channels_last=0),
        helper.make_node("Reshape", ["gq", shape], ["rq"]),
        helper.make_node("QLinearMatMul", ["rq", g_s, g_z, w3, w3_s, w3_z, o_s, o_z], ["oq"]),
        helper.make_node("DequantizeLinear", ["oq", o_s, o_z], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "qlinear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def test_prequantized_network_matches_onnxruntime():
    model = qlinear_network()
    quantized = from_qlinear_graph(import_onnx(model))
    assert [layer.kind for layer in quantized.layers] == ["conv", "conv", "add", "gap", "reshape", "fc_quantized",
                                                          "dequantize"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    runners = [ModelRunner(quantized, TINY, backend) for backend in ("numpy", "reference", "verilator")]
    for _ in range(5):
        image = rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
        expected = session.run(None, {"input": image})[0]
        outputs = [runner.run(quantized.input_q.quantize(image)) for runner in runners]
        # Imported models requantize with onnxruntime's float32 arithmetic: identical outputs.
        np.testing.assert_array_equal(outputs[0], expected)
        for other in outputs[1:]:
            np.testing.assert_array_equal(other, outputs[0])



def test_float_ops_in_a_prequantized_model_are_named_all_at_once():
    graph = import_onnx(qlinear_network())
    graph.nodes.insert(3, Node("Relu", "relu_1", ["bq"], ["relu_out"]))
    graph.nodes.append(Node("Conv", "conv_9", ["relu_out", "w1"], ["conv_out"]))
    with pytest.raises(ModelImportError) as error:
        from_qlinear_graph(graph)
    assert str(error.value).startswith("qlinear: cannot import 2 nodes: Relu (node 'relu_1'), Conv (node 'conv_9'): "
                                       "cannot be mixed into a pre-quantized model, which may use Clip, ")

@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "models" / "mobilenetv2-12-int8.onnx").is_file(), reason=f"shared data absent ({SHARED})")
def test_mobilenetv2_int8_agrees_with_onnxruntime(tmp_path):
    from mvu.hdl.contract.config import HardwareConfig
    from mvu.host.compiler.recipes import compile_source
    from mvu.host.tools.evaluation import evaluate

    source = SHARED / "models" / "mobilenetv2-12-int8.onnx"
    package = compile_source(str(source), config=HardwareConfig(), progress=False)
    report = evaluate(package, SHARED / "images", SHARED / "images" / "labels.csv", onnx_model=source, progress=False)
    assert report["agreement_top1"] >= 0.99, report  # measured: 200 of 200


def test_a_model_quantized_by_onnxruntime_runs_bit_exact(tmp_path):
    """onnxruntime's own quantizer (QOperator: QLinearConv, MaxPool on uint8, QLinearAdd, QGemm) -> mvu."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from mvu.models.onnx_builder import GraphBuilder

    rng = np.random.default_rng(3)
    g = GraphBuilder("ort-int8", (1, 3, 16, 16))
    x = g.relu(g.conv("input", rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8), padding=1))
    x = g.max_pool(x, 3, 2, 1)
    y = g.relu(g.conv(x, rng.normal(0, 0.2, (8, 8, 3, 3)), rng.normal(0, 0.1, 8), padding=1))
    x = g.flatten(g.global_average_pool(g.add(x, y)))
    onnx.save(g.build(g.gemm(x, rng.normal(0, 0.3, (10, 8)), rng.normal(0, 0.1, 10)), classes=10),
              tmp_path / "fp32.onnx")
    images = rng.normal(0, 1, (8, 1, 3, 16, 16)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({"input": image} for image in images)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(tmp_path / "fp32.onnx"), str(tmp_path / "int8.onnx"), Reader(),
                    quant_format=QuantFormat.QOperator, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    ops = {node.op_type for node in onnx.load(tmp_path / "int8.onnx").graph.node}
    assert {"QLinearConv", "MaxPool", "QLinearAdd", "QGemm"} <= ops
    model = from_qlinear_graph(import_onnx(str(tmp_path / "int8.onnx")))
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    for backend in ("numpy", "reference", "verilator"):
        runner = ModelRunner(model, TINY, backend)
        for image in rng.normal(0, 1, (3, 1, 3, 16, 16)).astype(np.float32):
            expected = session.run(None, {"input": image})[0]
            np.testing.assert_array_equal(runner.run(model.input_q.quantize(image)), expected)
        # The QLinearAdd reads the second convolution's output alone: its STOREs add (not on the numpy backend).
        placements = [stats.placement for stats in runner.stats if stats.kind == "add"]
        assert placements == ["host" if backend == "numpy" else FUSED_ADD], placements
