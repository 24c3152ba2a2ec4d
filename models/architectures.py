"""ImageNet classifiers with seeded random weights (or a user's), laid out as torchvision lays them out.

Every graph takes ``input`` float32 [1, 3, 224, 224] and gives ``logits`` [1, 1000], opset 17. Batch
normalization stays a separate ``BatchNormalization`` node after each convolution (the compiler folds
it). Parameters are named as in torchvision's ``state_dict`` (``layer1.0.conv1.weight``,
``layer1.0.bn1.running_var``, ``fc.bias``, ...): the graph's initializers carry those names, the Conv,
BatchNormalization and Gemm nodes carry the module's name (``layer1.0.conv1``), and a ``.npz`` of a
torchvision state dict (``np.savez(path, **{k: v.numpy() for k, v in sd.items()})``) loads as it is.

>>> model = build("resnet50", seed=3)                      # random weights
>>> save_weights(export_weights(model), "r50.npz")
>>> same = resnet(50, weights="r50.npz")                   # byte-identical to ``model``

Random weights: convolutions and linear layers are He-normal (std sqrt(2 / fan_in); the last linear
layer sqrt(1 / fan_in)); batch normalization has gamma in [0.6, 1.4], beta ~ N(0, 0.1), running mean
~ N(0, 0.2), running variance in [0.5, 1.5]. Running statistics that do not match the real ones do not
normalize: a residual branch's output has the scale of its input, so each block would roughly double
the variance (unscaled, the logits' std is ~90 for ResNet-18, ~8e3 for ResNet-50, ~1e12 for
ResNet-152). The last BN of every residual branch therefore has its gamma divided by sqrt(number of
blocks); the activations' RMS then grows only from ~2.4 after the stem to ~7-9 at the last block, and
for a standard-normal input the logits' std is ~6.6 (ResNet-18), ~6.1 (50), ~8.2 (152), ~3.4 (VGG-16)
and ~5.5 (DenseNet-121).

``light_model_path`` finds the architecture-only "light" models that the ``onnx`` wheel ships for its
backend tests (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from mvu.models.onnx_builder import GraphBuilder

__all__ = [
    "ARCHITECTURES", "WeightsError", "build", "count_macs", "densenet121", "export_weights", "light_model_path",
    "light_models", "resnet", "resnet18", "resnet50", "resnet152", "save_weights", "vgg16",
]

WeightsSource = str | Path | Mapping[str, np.ndarray] | None


class WeightsError(ValueError):
    """User-supplied weights do not fit the architecture: names every missing, misshaped or unknown parameter."""


class _Parameters:
    """Hands out parameter arrays by name: drawn from ``default_rng(seed)`` in graph order, or taken from
    the user's weights, where it collects every problem and raises them together in ``finish``."""

    def __init__(self, model: str, seed: int, weights: WeightsSource):
        self.model = model
        self.rng = np.random.default_rng(seed)
        self.source = None
        self.given: Mapping[str, np.ndarray] | None = None
        if weights is not None:
            if isinstance(weights, (str, Path)):
                self.source = str(weights)
                with np.load(weights, allow_pickle=False) as archive:
                    self.given = {key: archive[key] for key in archive.files}
            else:
                self.source = "the given mapping"
                self.given = weights
        self.used: dict[str, tuple[int, ...]] = {}
        self.missing: list[str] = []
        self.misshaped: list[str] = []

    def take(self, name: str, shape: tuple[int, ...], draw: Callable[[np.random.Generator, tuple], np.ndarray]):
        if name in self.used:
            raise AssertionError(f"{self.model}: parameter {name!r} used twice")
        self.used[name] = shape
        if self.given is None:
            return draw(self.rng, shape).astype(np.float32, copy=False)
        if name not in self.given:
            self.missing.append(f"{name} {shape}")
            return np.zeros(shape, np.float32)
        array = np.asarray(self.given[name])
        if array.shape != shape or not (np.issubdtype(array.dtype, np.floating)
                                        or np.issubdtype(array.dtype, np.integer)):
            self.misshaped.append(f"{name}: expected {shape} float, got {array.shape} {array.dtype}")
            return np.zeros(shape, np.float32)
        return np.ascontiguousarray(array, dtype=np.float32)

    def finish(self):
        if self.given is None:
            return
        # torchvision's state dicts count BN updates; nothing to do with inference.
        unknown = sorted(k for k in self.given if k not in self.used and not k.endswith("num_batches_tracked"))
        problems = []
        for title, names in (("missing", self.missing), ("misshaped", self.misshaped), ("unknown", unknown)):
            if names:
                shown = "; ".join(names[:10]) + (f"; ... ({len(names) - 10} more)" if len(names) > 10 else "")
                problems.append(f"{len(names)} {title} parameter(s): {shown}")
        if problems:
            raise WeightsError(f"{self.model} weights from {self.source} do not fit: " + ". ".join(problems))


def _he_normal(gain: float = 2.0):
    def draw(rng, shape):
        fan_in = math.prod(shape[1:])
        array = rng.standard_normal(shape, dtype=np.float32)
        array *= np.float32(math.sqrt(gain / fan_in))
        return array
    return draw


def _normal(std: float):
    return lambda rng, shape: rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def _uniform(low: float, high: float):
    return lambda rng, shape: rng.uniform(low, high, shape).astype(np.float32)


class _Net:
    """A ``GraphBuilder`` whose layers take their parameters from ``_Parameters`` by torchvision name."""

    def __init__(self, model: str, seed: int, weights: WeightsSource):
        self.builder = GraphBuilder(model)
        self.params = _Parameters(model, seed, weights)

    def _label(self, module: str, names: list[str]):
        """Give the node just added the module's name and its parameter initializers the parameters' names."""
        node = self.builder.nodes[-1]
        initializers = self.builder.initializers[-len(names):]
        renames = {init.name: name for init, name in zip(initializers, names)}
        assert list(node.input[1:]) == list(renames), "GraphBuilder no longer appends parameters as expected"
        for init in initializers:
            init.name = renames[init.name]
        node.input[1:] = names
        node.name = module

    def conv(self, x: str, module: str, cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0,
             bias: bool = False) -> str:
        weight = self.params.take(f"{module}.weight", (cout, cin, kernel, kernel), _he_normal())
        b = self.params.take(f"{module}.bias", (cout,), _normal(0.05)) if bias else None
        y = self.builder.conv(x, weight, b, stride=stride, padding=padding)
        self._label(module, [f"{module}.weight"] + ([f"{module}.bias"] if bias else []))
        return y

    def bn(self, x: str, module: str, channels: int, gamma_scale: float = 1.0) -> str:
        shape = (channels,)
        names = [f"{module}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
        gamma = self.params.take(names[0], shape, lambda rng, s: rng.uniform(0.6, 1.4, s) * gamma_scale)
        beta = self.params.take(names[1], shape, _normal(0.1))
        mean = self.params.take(names[2], shape, _normal(0.2))
        var = self.params.take(names[3], shape, _uniform(0.5, 1.5))
        y = self.builder.batch_norm(x, gamma, beta, mean, var)
        self._label(module, names)
        return y

    def linear(self, x: str, module: str, cin: int, cout: int, gain: float = 2.0) -> str:
        weight = self.params.take(f"{module}.weight", (cout, cin), _he_normal(gain))
        bias = self.params.take(f"{module}.bias", (cout,), _normal(0.01))
        y = self.builder.gemm(x, weight, bias)
        self._label(module, [f"{module}.weight", f"{module}.bias"])
        return y

    def relu(self, x: str) -> str:
        return self.builder.relu(x)

    def finish(self, logits: str) -> onnx.ModelProto:
        self.params.finish()
        return self.builder.build(logits)


# --- ResNet -------------------------------------------------------------------------------------------

#: depth -> (bottleneck?, blocks per stage), as torchvision's resnet18/50/152.
RESNET_DEPTHS = {18: (False, (2, 2, 2, 2)), 50: (True, (3, 4, 6, 3)), 152: (True, (3, 8, 36, 3))}


def resnet(depth: int, *, seed: int = 0, weights: WeightsSource = None) -> onnx.ModelProto:
    """torchvision's ResNet-``depth`` (18, 50 or 152), v1.5: a bottleneck's stride is on its 3x3 conv."""
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"no ResNet of depth {depth!r}; depths: {', '.join(map(str, RESNET_DEPTHS))}")
    bottleneck, blocks = RESNET_DEPTHS[depth]
    expansion = 4 if bottleneck else 1
    residual_gain = 1 / math.sqrt(sum(blocks))
    net = _Net(f"resnet{depth}", seed, weights)
    x = net.relu(net.bn(net.conv(net.builder.input_name, "conv1", 3, 64, 7, stride=2, padding=3), "bn1", 64))
    x = net.builder.max_pool(x, 3, 2, 1)
    channels = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for index in range(count):
            stride = 2 if stage > 1 and index == 0 else 1
            p = f"layer{stage}.{index}"
            out = planes * expansion
            if bottleneck:
                y = net.relu(net.bn(net.conv(x, f"{p}.conv1", channels, planes, 1), f"{p}.bn1", planes))
                y = net.relu(net.bn(net.conv(y, f"{p}.conv2", planes, planes, 3, stride=stride, padding=1),
                                    f"{p}.bn2", planes))
                y = net.bn(net.conv(y, f"{p}.conv3", planes, out, 1), f"{p}.bn3", out, residual_gain)
            else:
                y = net.relu(net.bn(net.conv(x, f"{p}.conv1", channels, planes, 3, stride=stride, padding=1),
                                    f"{p}.bn1", planes))
                y = net.bn(net.conv(y, f"{p}.conv2", planes, planes, 3, padding=1), f"{p}.bn2", planes,
                           residual_gain)
            shortcut = x
            if stride != 1 or channels != out:
                shortcut = net.bn(net.conv(x, f"{p}.downsample.0", channels, out, 1, stride=stride),
                                  f"{p}.downsample.1", out)
            x = net.relu(net.builder.add(y, shortcut))
            channels = out
    x = net.builder.flatten(net.builder.global_average_pool(x))
    return net.finish(net.linear(x, "fc", channels, 1000, gain=1.0))


def resnet18(*, seed: int = 0, weights: WeightsSource = None) -> onnx.ModelProto:
    """torchvision ``resnet18``: BasicBlocks [2, 2, 2, 2]."""
    return resnet(18, seed=seed, weights=weights)


def resnet50(*, seed: int = 0, weights: WeightsSource = None) -> onnx.ModelProto:
    """torchvision ``resnet50`` (v1.5): Bottlenecks [3, 4, 6, 3]."""
    return resnet(50, seed=seed, weights=weights)


def resnet152(*, seed: int = 0, weights: WeightsSource = None) -> onnx.ModelProto:
    """torchvision ``resnet152`` (v1.5): Bottlenecks [3, 8, 36, 3]."""
    return resnet(152, seed=seed, weights=weights)


# --- VGG ----------------------------------------------------------------------------------------------

VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(*, seed: int = 0, weights: WeightsSource = None) -> onnx.ModelProto:
    """torchvision ``vgg16`` (no batch norm), without dropout; its AdaptiveAvgPool2d(7) is the identity
    at 224 x 224 and is left out. Parameters ``features.{i}`` and ``classifier.{0,3,6}``."""
    net = _Net("vgg16", seed, weights)
    x, channels, index = net.builder.input_name, 3, 0
    for layer in VGG16_LAYERS:
        if layer == "M":
            x = net.builder.max_pool(x, 2, 2)
            index += 1
        else:
            x = net.relu(net.conv(x, f"features.{index}", channels, layer, 3, padding=1, bias=True))
            channels, index = layer, index + 2
    x = net.builder.flatten(x)
    x = net.relu(net.linear(x, "classifier.0", channels * 7 * 7, 4096))
    x = net.relu(net.linear(x, "classifier.3", 4096, 4096))
    return net.finish(net.linear(x, "classifier.6", 4096, 1000, gain=1.0))


# --- DenseNet -----------------------------------------------------------------------------------------

def densenet121(*, seed: int = 0, weights: WeightsSource = None) -> onnx.ModelProto:
    """torchvision ``densenet121``: growth 32, blocks (6, 12, 24, 16), bn_size 4, 64 initial features.

    Each dense layer appends its 32 channels to the block's running Concat (``Concat(x, new)``), which
    is what torchvision's concatenation of all earlier outputs computes."""
    growth, blocks, bn_size, features = 32, (6, 12, 24, 16), 4, 64
    net = _Net("densenet121", seed, weights)
    x = net.conv(net.builder.input_name, "features.conv0", 3, features, 7, stride=2, padding=3)
    x = net.builder.max_pool(net.relu(net.bn(x, "features.norm0", features)), 3, 2, 1)
    for block, layers in enumerate(blocks, start=1):
        for layer in range(1, layers + 1):
            p = f"features.denseblock{block}.denselayer{layer}"
            y = net.relu(net.bn(x, f"{p}.norm1", features))
            y = net.relu(net.bn(net.conv(y, f"{p}.conv1", features, bn_size * growth, 1), f"{p}.norm2",
                                bn_size * growth))
            y = net.conv(y, f"{p}.conv2", bn_size * growth, growth, 3, padding=1)
            x = net.builder.concat([x, y])
            features += growth
        if block < len(blocks):
            p = f"features.transition{block}"
            x = net.conv(net.relu(net.bn(x, f"{p}.norm", features)), f"{p}.conv", features, features // 2, 1)
            x = net.builder.average_pool(x, 2, 2)
            features //= 2
    x = net.relu(net.bn(x, "features.norm5", features))
    x = net.builder.flatten(net.builder.global_average_pool(x))
    return net.finish(net.linear(x, "classifier", features, 1000, gain=1.0))


# --- Registry -----------------------------------------------------------------------------------------

ARCHITECTURES: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "resnet152": resnet152,
    "vgg16": vgg16,
    "densenet121": densenet121,
}


def build(name: str, **kwargs) -> onnx.ModelProto:
    """``ARCHITECTURES[name](**kwargs)``: ``seed=`` and/or ``weights=`` (an .npz path or a mapping)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name](**kwargs)


def export_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The model's parameters by torchvision name (its initializers), ready for ``weights=``."""
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def save_weights(weights: Mapping[str, np.ndarray] | onnx.ModelProto, path: str | Path) -> None:
    """Write parameters (or a model's) to an uncompressed ``.npz`` that ``weights=path`` reads back."""
    if isinstance(weights, onnx.ModelProto):
        weights = export_weights(weights)
    with open(path, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to the name
        np.savez(f, **weights)


def count_macs(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates by op type (``Conv``, ``Gemm``, ``MatMul``) and ``total``, from the shapes
    that ONNX shape inference gives the graph."""
    # Shape inference on a copy whose large initializers are declared inputs: same shapes, no bulk copy.
    graph = model.graph
    declared = {info.name for info in graph.input}
    small = [init for init in graph.initializer if math.prod(init.dims) <= 64]
    large = [onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims)
             for init in graph.initializer if math.prod(init.dims) > 64 and init.name not in declared]
    light = onnx.helper.make_model(
        onnx.helper.make_graph(graph.node, graph.name, [*graph.input, *large], graph.output, small),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    graph = onnx.shape_inference.infer_shapes(light, strict_mode=True).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes.setdefault(info.name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims))
    macs = {"Conv": 0, "Gemm": 0, "MatMul": 0}
    for node in graph.node:
        if node.op_type == "Conv":
            weight = shapes[node.input[1]]  # (out, in / group, kh, kw)
            out = shapes[node.output[0]]    # (n, out, h, w)
            macs["Conv"] += math.prod(out) * math.prod(weight[1:])
        elif node.op_type == "Gemm":
            attrs = {a.name: a.i for a in node.attribute}
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            m, k = (a[1], a[0]) if attrs.get("transA") else a
            n = b[0] if attrs.get("transB") else b[1]
            macs["Gemm"] += m * n * k
        elif node.op_type == "MatMul":
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            macs["MatMul"] += math.prod(out) * a[-1]
    if any(v < 0 for v in macs.values()):
        raise ValueError(f"{model.graph.name}: shape inference left a dimension unknown")
    macs["total"] = sum(macs.values())
    return macs


# --- The onnx wheel's light models --------------------------------------------------------------------

LIGHT_MODEL_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light_models() -> dict[str, Path]:
    """The "light" models in the installed ``onnx`` wheel, by name (``resnet50`` for ``light_resnet50.onnx``)."""
    return {p.stem.removeprefix("light_"): p for p in sorted(LIGHT_MODEL_DIR.glob("light_*.onnx"))}


def light_model_path(name: str) -> Path:
    """Path of ``light_{name}.onnx`` in the ``onnx`` wheel (``name`` with or without the ``light_`` prefix).

    These are real model zoo architectures (Caffe2 / ONNX model zoo exports: bvlc_alexnet, densenet121,
    inception_v1, inception_v2, resnet50, shufflenet, squeezenet, vgg19, zfnet512) with opset 9 and IR
    version 3, whose weights are stripped: each weight is a ``ConstantOfShape`` node (filled with 0.02)
    fed by a small int64 shape initializer, so a compiler must constant-fold ``ConstantOfShape`` to get
    weights. Input is [1, 3, 224, 224] (``data_0`` or ``gpu_0/data_0``); output is a softmax, [1, 1000]
    or [1, 1000, 1, 1]. Beside each lies ``light_{name}_output_0.pb``, the expected output for the input
    ``arange(n).reshape(shape) / n`` (uniform probabilities, since every weight is the same)."""
    available = light_models()
    if not available:
        raise FileNotFoundError(f"no light_*.onnx models in {LIGHT_MODEL_DIR} (this onnx wheel lacks its test data)")
    key = name.removeprefix("light_").removesuffix(".onnx")
    if key not in available:
        raise ValueError(f"no light model {name!r}; available: {', '.join(available)}")
    return available[key]
