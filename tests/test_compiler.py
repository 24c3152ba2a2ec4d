"""ONNX import, quantization and layer-by-layer execution on every backend."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import TINY

from mvu.host.compiler.graph import SUPPORTED_OPS, ModelImportError, Node, import_onnx
from mvu.host.compiler.quantize import calibrate, check_graph, quantize_graph
from mvu.host.runtime.runner import ModelRunner, im2col
from mvu.models.onnx_builder import GraphBuilder


def small_network(seed=0):
    """Conv+BN+ReLU, MaxPool, Conv+ReLU6, depthwise Conv, residual Add, GAP, FC: the shapes of a real classifier."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder("small", (1, 3, 16, 16))
    x = g.conv("input", rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8), padding=1)
    x = g.batch_norm(x, rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.1, 8), rng.normal(0, 0.1, 8), rng.uniform(0.5, 1.5, 8))
    x = g.relu(x)
    x = g.max_pool(x, 3, 2, 1)
    y = g.relu6(g.conv(x, rng.normal(0, 0.2, (8, 8, 3, 3)), rng.normal(0, 0.1, 8), padding=1))
    d = g.conv(y, rng.normal(0, 0.3, (8, 1, 3, 3)), rng.normal(0, 0.1, 8), padding=1, group=8)
    x = g.add(x, d)
    x = g.flatten(g.global_average_pool(x))
    return g.build(g.gemm(x, rng.normal(0, 0.3, (10, 8)), rng.normal(0, 0.1, 10)), classes=10)


def test_import_folds_batch_norm_and_keeps_results():
    model = small_network()
    graph = import_onnx(model)
    assert "BatchNormalization" not in [n.op for n in graph.nodes]
    assert graph.shapes[graph.input] == (1, 3, 16, 16)


def test_quantized_network_tracks_fp32_and_backends_agree_bit_for_bit():
    model = small_network()
    graph = import_onnx(model)
    rng = np.random.default_rng(1)
    images = rng.normal(0, 1, (16, 3, 16, 16)).astype(np.float32)
    quantized = quantize_graph(graph, calibrate(model, graph, images, progress=False))
    placements = {r["op"]: r["placement"] for r in quantized.report}
    assert placements["Conv+relu"] == placements["Conv"] == "accelerator"  # the depthwise one too
    session = ort.InferenceSession(model.SerializeToString())
    runners = [ModelRunner(quantized, TINY, backend) for backend in ("numpy", "reference", "verilator")]
    for image in images[:3]:
        expected = session.run(None, {"input": image[None]})[0]
        image_q = quantized.input_q.quantize(image[None])
        outputs = [runner.run(image_q) for runner in runners]
        assert np.abs(outputs[0] - expected).max() < 0.05 * np.abs(expected).max()
        for other in outputs[1:]:
            np.testing.assert_array_equal(other, outputs[0])
    assert sum(s.cycles for s in runners[2].stats) > 0


def test_im2col_matches_a_direct_convolution():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (3, 9, 7)).astype(np.int64)
    w = rng.integers(-5, 5, (4, 3, 3, 2)).astype(np.int64)
    patches, ho, wo = im2col(x, (3, 2), (2, 1), (1, 0, 2, 1), (1, 2), 0)
    got = (patches @ w.transpose(0, 2, 3, 1).reshape(4, -1).T).T.reshape(4, ho, wo)
    padded = np.pad(x, ((0, 0), (1, 2), (0, 1)))
    for o in range(4):
        for i in range(ho):
            for j in range(wo):
                window = padded[:, 2 * i:2 * i + 3, j:j + 3:2]
                assert got[o, i, j] == (window * w[o]).sum()


def test_import_errors_name_the_cause(tmp_path):
    with pytest.raises(ModelImportError, match="no such file"):
        import_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model at all" * 10)
    with pytest.raises(ModelImportError, match="junk.onnx: not a readable ONNX model"):
        import_onnx(junk)
    model = small_network()
    model.graph.node.append(onnx.helper.make_node("Erf", ["logits"], ["erf"]))
    model.graph.output[0].name = "erf"
    with pytest.raises(ModelImportError, match=r"erf.onnx: cannot import 1 node: Erf \(node 'Erf_12'\): mvu does "
                                                r"not support this operator; it takes Add, AveragePool, "):
        import_onnx(model, name="erf.onnx")
    dynamic = small_network()
    dim = dynamic.graph.input[0].type.tensor_type.shape.dim[2]
    dim.Clear()
    dim.dim_param = "height"
    with pytest.raises(ModelImportError, match="dynamic size"):
        import_onnx(dynamic, name="dynamic.onnx")



def test_every_op_the_import_takes_has_a_handler():
    from mvu.host.compiler import prequantized, quantize
    from mvu.host.compiler.ir import INTERNAL_OPS

    dropped = {"Identity", "Dropout"}  # removed on import
    assert set(quantize.HANDLERS) | set(prequantized.HANDLERS) | dropped == SUPPORTED_OPS | INTERNAL_OPS


def test_quantization_names_every_unsupported_op_at_once():
    graph = import_onnx(small_network())
    graph.nodes.insert(2, Node("Erf", "erf_1", [graph.nodes[1].outputs[0]], ["erf_out"]))
    graph.nodes.append(Node("DequantizeLinear", "dq", ["logits", "s", "z"], ["dq_out"]))
    graph.nodes.append(Node("Erf", "erf_2", ["dq_out"], ["erf_out_2"]))
    with pytest.raises(ModelImportError) as error:
        quantize_graph(graph, {})  # refused before it reads a range
    message = str(error.value)
    assert message.startswith("small: cannot quantize 3 nodes: Erf (2 nodes: 'erf_1', 'erf_2'), DequantizeLinear "
                              "(node 'dq'): float models may use Add, AveragePool, BatchNormalization, Clip, Concat, ")


def test_a_product_of_two_tensors_is_refused_by_name():
    rng = np.random.default_rng(0)
    g = GraphBuilder("mul", (1, 3, 8, 8))
    a = g.conv("input", rng.normal(0, 0.3, (4, 3, 1, 1)))
    b = g.conv("input", rng.normal(0, 0.3, (4, 3, 1, 1)))
    product = g.node("Mul", [a, b])
    model = g.build(g.gemm(g.flatten(g.global_average_pool(product)), rng.normal(0, 0.3, (10, 4)),
                           np.zeros(10)), classes=10)
    graph = import_onnx(model)
    with pytest.raises(ModelImportError, match=f"mul: cannot quantize 1 node: Mul \\(node '{product}'\\): needs one "
                                               f"constant operand"):
        check_graph(graph)  # what compile_model checks before calibrating

def test_package_round_trip_and_refusals(tmp_path):
    from mvu.hdl.contract.config import HardwareConfig
    from mvu.host.model.package import ModelPackage, PackageError, load_package, save_package

    model = small_network()
    graph = import_onnx(model)
    images = np.random.default_rng(2).normal(0, 1, (8, 3, 16, 16)).astype(np.float32)
    quantized = quantize_graph(graph, calibrate(model, graph, images, progress=False))
    package = ModelPackage("small", quantized, TINY, preprocessing={"resize": 16, "crop": 16},
                           labels=[f"class {i}" for i in range(10)], source_sha256=graph.source_sha256)
    path = save_package(package, tmp_path / "small.mvu")
    loaded = load_package(path, TINY)
    assert loaded.labels == package.labels and loaded.source_sha256 == graph.source_sha256
    image_q = quantized.input_q.quantize(images[:1])
    np.testing.assert_array_equal(ModelRunner(loaded.model, TINY).run(image_q),
                                  ModelRunner(quantized, TINY).run(image_q))
    with pytest.raises(PackageError, match="compiled for 4x4 array.*but this accelerator is 32x32"):
        load_package(path, HardwareConfig())
    (tmp_path / "bad.mvu").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PackageError, match="bad.mvu: not an mvu model package"):
        load_package(tmp_path / "bad.mvu")
    with pytest.raises(PackageError, match="no such file"):
        load_package(tmp_path / "none.mvu")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_profile_table_and_plot(tmp_path, verilator_executors):
    from mvu.host.tools.profile import layer_table, plot_profile

    model = small_network()
    graph = import_onnx(model)
    images = np.random.default_rng(5).normal(0, 1, (8, 3, 16, 16)).astype(np.float32)
    quantized = quantize_graph(graph, calibrate(model, graph, images, progress=False))
    runner = ModelRunner(quantized, TINY, "verilator", verilator_executors(TINY))
    runner.run(quantized.input_q.quantize(images[:1]))
    table = layer_table(runner.stats, TINY)
    cycles = sum(s.cycles for s in runner.stats)
    assert f"{cycles:,}" in table and "modelled accelerator latency" in table
    assert len(table.splitlines()) == len(runner.stats) + 3
    path = plot_profile(runner.stats, TINY, tmp_path / "profile.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def float16(model: onnx.ModelProto, keep_io_types: bool) -> onnx.ModelProto:
    """``model`` with float16 weights; its input and output float16 too, or float32 with Casts around."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == onnx.TensorProto.FLOAT:
            graph.initializer[index].CopyFrom(onnx.numpy_helper.from_array(
                onnx.numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    if not keep_io_types:
        for value in (*graph.input, *graph.output):
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
        return half
    for node in graph.node:
        node.input[:] = ["input_half" if name == "input" else name for name in node.input]
        node.output[:] = ["logits_half" if name == "logits" else name for name in node.output]
    graph.node.insert(0, onnx.helper.make_node("Cast", ["input"], ["input_half"], to=onnx.TensorProto.FLOAT16))
    graph.node.append(onnx.helper.make_node("Cast", ["logits_half"], ["logits"], to=onnx.TensorProto.FLOAT))
    return half


@pytest.mark.parametrize("keep_io_types", [False, True])
def test_a_float16_model_compiles_as_float32(keep_io_types):
    from mvu.host.compiler.compile import compile_model
    from mvu.host.compiler.recipes import demo_photos
    from mvu.host.runtime.preprocess import PreprocessRecipe, preprocess

    model = small_network()
    half = float16(model, keep_io_types)
    onnx.checker.check_model(half)
    preprocessing = {"resize": 16, "crop": 16, "mean": [127.0] * 3, "std": [64.0] * 3}
    package = compile_model(half, config=TINY, preprocessing=preprocessing, labels=[], progress=False)
    image = preprocess(demo_photos()[0], PreprocessRecipe.from_dict(preprocessing))
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"input": image})[0]
    got = ModelRunner(package.model, TINY).run(package.model.input_q.quantize(image))
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()


def test_preprocessing_comes_from_the_model_or_is_assumed_loudly(tmp_path, capsys):
    from mvu.host.compiler.preprocessing import PREPROCESSING_KEY, with_preprocessing
    from mvu.host.compiler.recipes import RECIPES, compile_source

    model, preprocessing = RECIPES["toy"]()
    assert json.loads(next(p.value for p in model.metadata_props if p.key == PREPROCESSING_KEY)) == preprocessing
    other = {**preprocessing, "mean": [127.0] * 3, "std": [128.0] * 3}
    onnx.save(with_preprocessing(model, other), tmp_path / "stated.onnx")
    package = compile_source(str(tmp_path / "stated.onnx"), config=TINY, progress=False)
    assert package.preprocessing["mean"] == other["mean"] and "WARNING" not in capsys.readouterr().err
    given = {**preprocessing, "resize": 32, "mean": [0.0] * 3, "std": [255.0] * 3}
    (tmp_path / "given.json").write_text(json.dumps(given))
    package = compile_source(str(tmp_path / "stated.onnx"), config=TINY, preprocess=str(tmp_path / "given.json"),
                             progress=False)
    assert package.preprocessing["mean"] == given["mean"]  # --preprocess wins
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "silent.onnx")
    with pytest.raises(ModelImportError, match="takes 32x32 images but the preprocessing crops 224x224"):
        compile_source(str(tmp_path / "silent.onnx"), config=TINY, progress=False)
    warning = capsys.readouterr().err
    assert f"WARNING: {tmp_path / 'silent.onnx'} does not say how its input is made" in warning
    assert "ASSUMING torchvision's ImageNet normalization" in warning


def test_compile_verbose_lists_every_layer_with_its_placement(tmp_path, capsys):
    from mvu.host.model.package import load_package
    from mvu.host.tools.cli import main

    assert main(["compile", "toy", "-o", str(tmp_path / "toy.mvu"), "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    layers = load_package(tmp_path / "toy.mvu").model.layers
    rows = [line for line in lines if " -> " in line and not line.startswith("compiled")]
    assert len(rows) == len(layers) == 5
    assert "  stages: preprocessing (host, to input), then featurizer (" in lines[-1]
    for layer, row in zip(layers, rows):
        assert row.split()[0] == layer.name and f"-> {layer.placement}" in row
    assert {"gap", "reshape", "fc"} <= {layer.kind for layer in layers}
    assert "float output" in rows[-1] and "nan" not in "\n".join(rows)


def vgg_tail(seed=0):
    """A convolution, a 2x2 max pool, then VGG's flatten of a 4 x 4 x 12 map into two fully connected layers."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder("vgg_tail", (1, 3, 8, 8))
    x = g.max_pool(g.relu(g.conv("input", rng.normal(0, 0.3, (12, 3, 3, 3)), rng.normal(0, 0.1, 12), padding=1)), 2, 2)
    x = g.relu(g.gemm(g.flatten(x), rng.normal(0, 0.1, (20, 192)), rng.normal(0, 0.1, 20)))
    return g.build(g.gemm(x, rng.normal(0, 0.3, (10, 20)), rng.normal(0, 0.1, 10)), classes=10)


def test_a_flatten_that_products_read_is_a_channels_last_view(monkeypatch):
    """VGG's flatten of a feature map is no copy: the product reads the map's channels-last bytes as they lie, its
    weight rows permuted to match; the logits are those of the copy in ONNX's order, bit for bit."""
    from mvu.host.compiler import builder

    model = vgg_tail()
    graph = import_onnx(model)
    images = np.random.default_rng(2).normal(0, 1, (8, 3, 8, 8)).astype(np.float32)
    ranges = calibrate(model, graph, images, progress=False)
    folded = quantize_graph(graph, ranges)
    (flatten,) = [layer for layer in folded.layers if layer.kind == "reshape"]
    assert flatten.placement == "view" and flatten.attrs["channels_last"] == [12, 4, 4]
    monkeypatch.setattr(builder, "_PRODUCTS", ())
    copied = quantize_graph(import_onnx(model), ranges)
    assert [layer.placement for layer in copied.layers if layer.kind == "reshape"] == ["host"]
    batch = folded.input_q.quantize(images)
    for backend in ("numpy", "reference"):
        np.testing.assert_array_equal(ModelRunner(folded, TINY, backend).run_batch(batch),
                                      ModelRunner(copied, TINY, "numpy").run_batch(batch))
