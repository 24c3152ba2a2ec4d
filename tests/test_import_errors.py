"""Malformed and unsupported ONNX files through `mvu compile`: each gets one line naming the file and every
offending node, before any calibration, and no traceback."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mvu.host.compiler.preprocessing import PREPROCESSING_KEY, with_preprocessing
from mvu.host.tools.cli import main
from mvu.models.onnx_builder import GraphBuilder

PREPROCESSING = {"resize": 16, "crop": 16, "mean": [127.0] * 3, "std": [64.0] * 3}


def network(shape=(1, 3, 16, 16), extra=None) -> onnx.ModelProto:
    """Conv-ReLU, global average pool, Gemm: a tiny classifier stating its preprocessing; ``extra(g, x)`` may add
    nodes after the ReLU and returns the tensor that goes on."""
    rng = np.random.default_rng(0)
    g = GraphBuilder("tiny", shape)
    x = g.relu(g.conv("input", rng.normal(0, 0.3, (4, shape[1], 3, 3)), rng.normal(0, 0.1, 4), padding=1))
    if extra is not None:
        x = extra(g, x)
    x = g.flatten(g.global_average_pool(x))
    return with_preprocessing(g.build(g.gemm(x, rng.normal(0, 0.3, (10, 4)), np.zeros(10)), classes=10),
                              PREPROCESSING)


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, path)
    return str(path)


def empty(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    return tmp_path / "empty.onnx", ["the file is empty (0 bytes)"]


def truncated(tmp_path):
    data = network().SerializeToString()
    (tmp_path / "truncated.onnx").write_bytes(data[:len(data) // 2 + 3])
    return tmp_path / "truncated.onnx", ["not a readable ONNX model: the file is truncated or is not ONNX"]


def a_photo(tmp_path):
    (tmp_path / "photo.onnx").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(256)) * 4)
    return tmp_path / "photo.onnx", ["not"]


def a_directory(tmp_path):
    (tmp_path / "folder.onnx").mkdir()
    return tmp_path / "folder.onnx", ["is a directory, not an ONNX file"]


def one_channel(tmp_path):
    return save(network((1, 1, 16, 16)), tmp_path / "grey.onnx"), ["input 'input' [1, 1, 16, 16] has 1 channel",
                                                                   "RGB images, 3 channels"]


def channels_last(tmp_path):
    model = network()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, (1, 16, 16, 3)):
        dim.dim_value = size
    return save(model, tmp_path / "nhwc.onnx"), ["input 'input' [1, 16, 16, 3] is channels-last (NHWC)"]


def dynamic_size(tmp_path):
    model = network()
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width")):
        dim.Clear()
        dim.dim_param = name
    return save(model, tmp_path / "dynamic.onnx"), ["input 'input' [1, 3, height, width] has a dynamic size"]


def several_unsupported_ops(tmp_path):
    def extra(g, x):
        x = g.node("Erf", [x], "erf_a")
        x = g.node("Erf", [x], "erf_b")
        x = g.node("Sin", [x], "sin")
        return g.node("Cos", [x], "cos")
    return save(network(extra=extra), tmp_path / "ops.onnx"), [
        "cannot import 4 nodes: Erf (2 nodes: 'erf_a_", "Sin (node 'sin_", "Cos (node 'cos_",
        "mvu does not support these operators"]


def external_data_missing(tmp_path):
    onnx.save(network(), tmp_path / "external.onnx", save_as_external_data=True, location="external.onnx.data",
              size_threshold=0)
    (tmp_path / "external.onnx.data").unlink()
    return tmp_path / "external.onnx", ["its weights are stored outside the model, in 'external.onnx.data', which "
                                        "is missing"]


def two_outputs(tmp_path):
    model = network()
    model.graph.output.append(helper.make_tensor_value_info("relu_2", TensorProto.FLOAT, None))
    return save(model, tmp_path / "two.onnx"), ["it has 2 outputs ('logits', 'relu_2'); mvu takes one output"]


def two_inputs(tmp_path):
    model = network()
    model.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 3, 16, 16]))
    return save(model, tmp_path / "inputs.onnx"), ["it has 2 inputs ('input', 'mask'); mvu takes one image input"]


def integer_input(tmp_path):
    model = network()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    return save(model, tmp_path / "uint8.onnx"), ["input 'input' is uint8; mvu feeds float32 images"]


def not_an_image(tmp_path):
    model = network()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    del dims[2:]
    return save(model, tmp_path / "vector.onnx"), ["input 'input' [1, 3] is not an image batch"]


def old_opset(tmp_path):
    model = network()
    model.opset_import[0].version = 7
    return save(model, tmp_path / "old.onnx"), ["opset 7 is outside the supported 9..21"]


def no_opset(tmp_path):
    model = network()
    del model.opset_import[:]
    return save(model, tmp_path / "no-opset.onnx"), ["not an ONNX model: it has no opset"]


def inconsistent_shapes(tmp_path):
    model = network()
    weight = next(t for t in model.graph.initializer if t.name.startswith("fc_w"))
    weight.CopyFrom(numpy_helper.from_array(np.zeros((10, 5), np.float32), weight.name))  # 4 features come
    return save(model, tmp_path / "shapes.onnx"), ["shape inference failed"]


def product_of_tensors(tmp_path):
    def extra(g, x):
        return g.node("Mul", [x, g.relu(x)], "product")
    return save(network(extra=extra), tmp_path / "mul.onnx"), ["cannot quantize 1 node: Mul (node 'product_",
                                                               "needs one constant operand"]


def auto_pad_and_dilated_pool(tmp_path):
    def extra(g, x):
        g.nodes[0].attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))
        del g.nodes[0].attribute[[a.name for a in g.nodes[0].attribute].index("pads")]
        return g.node("MaxPool", [x], "pool", kernel_shape=[2, 2], dilations=[2, 2], ceil_mode=1)
    return save(network(extra=extra), tmp_path / "pads.onnx"), [
        "cannot quantize 2 nodes: Conv (node 'conv_", "uses auto_pad", "MaxPool (node 'pool_", "uses dilations"]


def wrong_input_size(tmp_path):
    model = network()
    del model.metadata_props[:]
    return save(model, tmp_path / "small.onnx"), ["the model takes 16x16 images but the preprocessing crops 224x224"]


def bad_preprocessing_metadata(tmp_path):
    model = network()
    onnx.helper.set_model_props(model, {PREPROCESSING_KEY: json.dumps({"resize": 16, "crop": 16})})
    return save(model, tmp_path / "metadata.onnx"), [f"its metadata '{PREPROCESSING_KEY}' is not a preprocessing "
                                                     f"recipe (ValueError: preprocessing recipe is missing keys: mean, std)"]


def qdq_float_island(tmp_path):
    """A QDQ model with a float Softmax and a BatchNormalization between quantized ops."""
    s, z = numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.uint8(128), "z")
    stats = [numpy_helper.from_array(np.ones(3, np.float32), name) for name in ("gamma", "beta", "mean", "var")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"], name="quantize"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dequantize"),
             helper.make_node("BatchNormalization", ["dq", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
             helper.make_node("Softmax", ["bn"], ["probabilities"], name="softmax", axis=1)]
    graph = helper.make_graph(nodes, "island", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [s, z, *stats])
    model = with_preprocessing(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), PREPROCESSING)
    return save(model, tmp_path / "island.onnx"), [
        "cannot import 2 nodes: BatchNormalization (node 'bn'): fold it into the convolution before quantizing",
        "Softmax (node 'softmax'): mvu has no quantized form of it"]


CASES = [empty, truncated, a_photo, a_directory, one_channel, channels_last, dynamic_size, several_unsupported_ops,
         external_data_missing, two_outputs, two_inputs, integer_input, not_an_image, old_opset, no_opset,
         inconsistent_shapes, product_of_tensors, auto_pad_and_dilated_pool, wrong_input_size,
         bad_preprocessing_metadata, qdq_float_island]


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_a_bad_model_gets_one_line_naming_the_file_and_every_offending_node(case, tmp_path, capsys, monkeypatch):
    from mvu.host.compiler import compile as compile_module

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated a model it then refused")

    monkeypatch.setattr(compile_module, "calibrate", no_calibration)
    path, expected = case(tmp_path)
    (tmp_path / "labels.txt").write_text("".join(f"class {i}\n" for i in range(10)))
    with pytest.raises(SystemExit) as exit_:
        main(["compile", str(path), "-o", str(tmp_path / "out.mvu"), "--labels", str(tmp_path / "labels.txt")])
    message = str(exit_.value.code)
    assert message.startswith(f"mvu: {path}: ") and "\n" not in message, message
    for part in expected:
        assert part in message, message
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out.mvu").exists()
