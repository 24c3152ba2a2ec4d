"""ImageNet architectures with seeded random weights: structure against the published figures, numerics
in onnxruntime, determinism, and weights in and out of .npz files."""

import re

import numpy as np
import onnx
import pytest

from mvu.models.architectures import (
    ARCHITECTURES,
    WeightsError,
    build,
    count_macs,
    export_weights,
    light_model_path,
    light_models,
    resnet,
    save_weights,
)

#: name -> (Conv nodes, BatchNormalization nodes, MACs as torchvision's model docs give them ("GFLOPS")).
PUBLISHED = {
    "resnet18": (20, 20, 1.81e9),
    "resnet50": (53, 53, 4.09e9),
    "resnet152": (155, 155, 11.51e9),
    "vgg16": (13, 0, 15.47e9),
    "densenet121": (120, 121, 2.83e9),
}
BIG = ("resnet152", "vgg16")
ALL = list(PUBLISHED)
#: The onnxruntime runs of the two biggest take seconds each: slow.
RUNS = [pytest.param(name, marks=pytest.mark.slow) if name in BIG else name for name in ALL]

_cache: dict[str, onnx.ModelProto] = {}


def model(name: str) -> onnx.ModelProto:
    """The seed-0 build, made once per test session (vgg16 alone is half a gigabyte and ~8 s)."""
    if name not in _cache:
        _cache[name] = build(name, seed=0)
    return _cache[name]


def assert_same_model(a: onnx.ModelProto, b: onnx.ModelProto):
    """Byte for byte, initializer by initializer (serializing 500 MB whole takes seconds)."""
    assert [n.SerializeToString() for n in a.graph.node] == [n.SerializeToString() for n in b.graph.node]
    assert len(a.graph.initializer) == len(b.graph.initializer)
    for x, y in zip(a.graph.initializer, b.graph.initializer):
        assert (x.name, x.data_type, list(x.dims)) == (y.name, y.data_type, list(y.dims))
        assert x.raw_data == y.raw_data, x.name
    rest = lambda m: (m.ir_version, list(m.opset_import), list(m.graph.input), list(m.graph.output))  # noqa: E731
    assert rest(a) == rest(b)


def ops(m: onnx.ModelProto, op: str) -> int:
    return sum(node.op_type == op for node in m.graph.node)


def dims(info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", ALL)
def test_structure_matches_the_published_architecture(name):
    m = model(name)
    onnx.checker.check_model(m)
    convs, bns, macs = PUBLISHED[name]
    assert ops(m, "Conv") == convs
    assert ops(m, "BatchNormalization") == bns
    counted = count_macs(m)
    assert counted["total"] == pytest.approx(macs, rel=0.05), counted
    assert ops(m, "Gemm") == (3 if name == "vgg16" else 1)
    assert [(i.name, dims(i)) for i in m.graph.input] == [("input", [1, 3, 224, 224])]
    assert [(o.name, dims(o)) for o in m.graph.output] == [("logits", [1, 1000])]
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 17)]
    assert all(init.data_type == onnx.TensorProto.FLOAT for init in m.graph.initializer)
    # Running variances are positive, so folding BN divides by something real.
    for init in m.graph.initializer:
        if init.name.endswith("running_var"):
            assert onnx.numpy_helper.to_array(init).min() > 0, init.name


def test_resnet_details():
    m = model("resnet50")
    by_name = {node.name: node for node in m.graph.node}
    attrs = lambda node: {a.name: list(a.ints) for a in node.attribute if a.ints}  # noqa: E731
    # v1.5: the stride of a downsampling bottleneck is on its 3x3 conv, and on the shortcut.
    assert attrs(by_name["layer2.0.conv1"])["strides"] == [1, 1]
    assert attrs(by_name["layer2.0.conv2"])["strides"] == [2, 2]
    assert attrs(by_name["layer2.0.downsample.0"])["strides"] == [2, 2]
    assert attrs(by_name["conv1"]) == {"kernel_shape": [7, 7], "strides": [2, 2], "pads": [3, 3, 3, 3],
                                       "dilations": [1, 1]}
    assert ops(m, "Add") == 16 and ops(m, "MaxPool") == 1 and ops(m, "GlobalAveragePool") == 1
    assert ops(model("densenet121"), "Concat") == 58 and ops(model("densenet121"), "AveragePool") == 3
    assert ops(model("vgg16"), "MaxPool") == 5
    with pytest.raises(ValueError, match="18, 50, 152"):
        resnet(34)


@pytest.mark.parametrize("name", RUNS)
def test_onnxruntime_gives_finite_spread_logits(name):
    import onnxruntime as ort

    session = ort.InferenceSession(model(name).SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (logits,) = session.run(["logits"], {"input": x})
    assert logits.shape == (1, 1000)
    assert np.isfinite(logits).all()
    assert 1e-3 < logits.std() < 1e3


# Building VGG-16 (553 MB of weights) takes seconds each time: its copies run in `make test-slow`.
HEAVY = [pytest.param(name, marks=pytest.mark.slow) if name == "vgg16" else name for name in ALL]


@pytest.mark.parametrize("name", HEAVY)
def test_seed_determines_the_weights(name):
    assert_same_model(build(name, seed=0), model(name))
    other = build(name, seed=1)
    assert [n.SerializeToString() for n in other.graph.node] == [n.SerializeToString() for n in model(name).graph.node]
    assert all(x.raw_data != y.raw_data for x, y in zip(other.graph.initializer, model(name).graph.initializer))


@pytest.mark.parametrize("name", HEAVY)
def test_weights_round_trip_through_npz(name, tmp_path):
    path = tmp_path / f"{name}.npz"
    save_weights(export_weights(model(name)), path)
    with np.load(path) as archive:
        assert len(archive.files) == len(model(name).graph.initializer)
    assert_same_model(build(name, weights=path), model(name))


def test_weights_use_torchvision_names():
    names = set(export_weights(model("resnet18")))
    assert {"conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight", "layer4.1.bn2.bias",
            "fc.weight", "fc.bias"} <= names
    assert export_weights(model("resnet18"))["fc.weight"].shape == (1000, 512)
    assert {"features.0.bias", "features.28.weight", "classifier.6.weight"} <= set(export_weights(model("vgg16")))
    assert {"features.denseblock4.denselayer16.conv2.weight", "features.transition3.norm.running_mean",
            "features.norm5.weight", "classifier.bias"} <= set(export_weights(model("densenet121")))


def test_misshaped_missing_and_unknown_weights_are_named(tmp_path):
    weights = export_weights(model("resnet18"))
    bad = dict(weights, **{"layer3.1.conv2.weight": np.zeros((256, 256, 1, 1), np.float32)})
    path = tmp_path / "bad.npz"
    save_weights(bad, path)
    with pytest.raises(WeightsError, match=re.escape("layer3.1.conv2.weight: expected (256, 256, 3, 3)")):
        build("resnet18", weights=path)

    missing = {k: v for k, v in weights.items() if k != "layer1.0.bn2.running_mean"}
    with pytest.raises(WeightsError, match=r"1 missing parameter\(s\): layer1\.0\.bn2\.running_mean \(64,\)"):
        build("resnet18", weights=missing)

    with pytest.raises(WeightsError, match="unknown parameter.*layer5.0.conv1.weight"):
        build("resnet18", weights=dict(weights, **{"layer5.0.conv1.weight": np.zeros(3)}))

    # torchvision's state dicts carry BN step counters; they are ignored. Other float types convert.
    extra = {k: v.astype(np.float64) for k, v in weights.items()}
    extra["bn1.num_batches_tracked"] = np.array(7)
    assert_same_model(build("resnet18", weights=extra), model("resnet18"))

    # resnet18 weights do not make a resnet50.
    with pytest.raises(WeightsError, match="missing.*misshaped"):
        build("resnet50", weights=weights)


def test_registry():
    assert set(ARCHITECTURES) == set(PUBLISHED)
    with pytest.raises(ValueError, match="resnet18, resnet50, resnet152, vgg16, densenet121"):
        build("resnet101")


def test_light_models_from_the_onnx_wheel():
    available = light_models()
    assert {"resnet50", "vgg19", "densenet121"} <= set(available)
    for name, path in available.items():
        assert light_model_path(name) == path == light_model_path(f"light_{name}")
        m = onnx.load(path)
        onnx.checker.check_model(m)
        inits = {init.name for init in m.graph.initializer}
        (data,) = [i for i in m.graph.input if i.name not in inits]
        assert dims(data) == [1, 3, 224, 224]
        assert dims(m.graph.output[0])[:2] == [1, 1000]
    assert count_macs(onnx.load(light_model_path("resnet50")))["total"] == pytest.approx(4.09e9, rel=0.05)
    with pytest.raises(ValueError, match="available: .*resnet50"):
        light_model_path("resnet51")
