"""SSD300 with a VGG-16 backbone (Liu et al. 2016, torchvision's ``ssd300_vgg16``) and seeded random weights.

The graph takes ``input`` float32 [1, 3, 300, 300] and gives two outputs, as a detection export does:

* ``boxes`` [1, 8732, 4]: box regressions (dx, dy, dw, dh) against the prior boxes, to be decoded with the
  variances (0.1, 0.2) (:mod:`mvu.host.runtime.detection`);
* ``scores`` [1, 8732, classes]: class logits, class 0 the background. The default is COCO's 80 classes and
  the background, 81 (torchvision's COCO models count 91, with the ids COCO leaves unused).

Layers, in torchvision's order and names: VGG-16 without batch norm up to conv4_3 (pool3 rounds up: 75 -> 38);
conv4_3's L2 normalization with a learned per-channel scale (``LpNormalization`` then ``Mul``; 20 at
initialization, as in the paper); pool4, conv5_x, pool5 3x3 stride 1 pad 1, fc6 as a 3x3 convolution with
dilation 6 and fc7 as a 1x1 convolution; the extra layers conv8_1/8_2 (stride 2), conv9_1/9_2 (stride 2),
conv10_1/10_2 and conv11_1/11_2 (unpadded); the multibox heads, a 3x3 location and a 3x3 confidence
convolution on each of the six feature maps (38, 19, 10, 5, 3, 1 with 4, 6, 6, 6, 4, 4 boxes per position,
8732 priors). Each head's [1, A * K, H, W] becomes [1, H * W * A, K] by Transpose (0, 2, 3, 1) and Reshape,
the order of torchvision's SSDHead and of the priors; the six are joined by Concat on axis 1.

Random weights: He-normal convolutions (std sqrt(2 / fan_in); the heads sqrt(1 / fan_in)), biases N(0, 0.05).
``width`` divides every channel count but the input's and the heads' outputs (1: SSD300 itself).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from mvu.models.architectures import WeightsSource, _he_normal, _Net, _normal

__all__ = ["COCO_LABELS", "FEATURE_MAPS", "BOXES_PER_LOCATION", "ssd300_vgg16"]

#: Sides of the six feature maps the heads read, and the boxes per position on each (SSD300).
FEATURE_MAPS = (38, 19, 10, 5, 3, 1)
BOXES_PER_LOCATION = (4, 6, 6, 6, 4, 4)

#: COCO's 80 object classes, after the background.
COCO_LABELS = ["background", *(
    "person,bicycle,car,motorcycle,airplane,bus,train,truck,boat,traffic light,fire hydrant,stop sign,"
    "parking meter,bench,bird,cat,dog,horse,sheep,cow,elephant,bear,zebra,giraffe,backpack,umbrella,handbag,tie,"
    "suitcase,frisbee,skis,snowboard,sports ball,kite,baseball bat,baseball glove,skateboard,surfboard,"
    "tennis racket,bottle,wine glass,cup,fork,knife,spoon,bowl,banana,apple,sandwich,orange,broccoli,carrot,"
    "hot dog,pizza,donut,cake,chair,couch,potted plant,bed,dining table,toilet,tv,laptop,mouse,remote,keyboard,"
    "cell phone,microwave,oven,toaster,sink,refrigerator,book,clock,vase,scissors,teddy bear,hair drier,"
    "toothbrush").split(",")]

#: VGG-16's features up to conv4_3: (index in torchvision's ``features``, output channels) or "M" / "C"
#: (2x2 max pool, rounding down / up).
_FEATURES = ((0, 64), (2, 64), "M", (5, 128), (7, 128), "M", (10, 256), (12, 256), (14, 256), "C",
             (17, 512), (19, 512), (21, 512))
#: The extra layers after fc7: (1x1 channels, 3x3 channels, stride and padding of the 3x3).
_EXTRAS = ((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0))


class _Detector(_Net):
    def conv_relu(self, x: str, module: str, cin: int, cout: int, kernel: int, *, stride: int = 1,
                  padding: int = 0, dilation: int = 1) -> str:
        weight = self.params.take(f"{module}.weight", (cout, cin, kernel, kernel), _he_normal())
        bias = self.params.take(f"{module}.bias", (cout,), _normal(0.05))
        y = self.builder.conv(x, weight, bias, stride=stride, padding=padding, dilation=dilation)
        self._label(module, [f"{module}.weight", f"{module}.bias"])
        return self.relu(y)

    def head(self, x: str, module: str, cin: int, cout: int, values: int) -> str:
        """A 3x3 head convolution as [1, H * W * boxes, values]."""
        weight = self.params.take(f"{module}.weight", (cout, cin, 3, 3), _he_normal(1.0))
        bias = self.params.take(f"{module}.bias", (cout,), _normal(0.05))
        y = self.builder.conv(x, weight, bias, padding=1)
        self._label(module, [f"{module}.weight", f"{module}.bias"])
        y = self.builder.node("Transpose", [y], perm=[0, 2, 3, 1])
        return self.builder.node("Reshape", [y, self.builder.constant(np.array([1, -1, values], np.int64), "shape")])

    def l2_norm(self, x: str, module: str, channels: int) -> str:
        """``x / ||x||`` over the channels, times a learned per-channel scale."""
        y = self.builder.node("LpNormalization", [x], "l2norm", axis=1, p=2)
        scale = self.params.take(module, (channels,), lambda rng, shape: np.full(shape, 20.0))
        self.builder.initializers.append(onnx.numpy_helper.from_array(scale.reshape(1, channels, 1, 1), module))
        return self.builder.node("Mul", [y, module], "l2scale")


def ssd300_vgg16(*, classes: int = 81, seed: int = 0, width: int = 1, weights: WeightsSource = None
                 ) -> onnx.ModelProto:
    """SSD300-VGG16 with ``classes`` classes including the background; see the module's docstring."""
    net = _Detector("ssd300_vgg16", seed, weights)
    b = net.builder
    b.input = helper.make_tensor_value_info(b.input_name, TensorProto.FLOAT, [1, 3, 300, 300])
    x, channels = b.input_name, 3
    for layer in _FEATURES:
        if isinstance(layer, str):
            x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=int(layer == "C"))
            continue
        index, out = layer
        x = net.conv_relu(x, f"backbone.features.{index}", channels, out // width, 3, padding=1)
        channels = out // width
    maps = [net.l2_norm(x, "backbone.scale_weight", channels)]
    x = b.max_pool(x, 2, 2)
    for index in (1, 3, 5):  # conv5_1 .. conv5_3
        x = net.conv_relu(x, f"backbone.extra.0.{index}", channels, 512 // width, 3, padding=1)
    x = b.max_pool(x, 3, 1, 1)
    x = net.conv_relu(x, "backbone.extra.0.8", channels, 1024 // width, 3, padding=6, dilation=6)  # fc6
    x = net.conv_relu(x, "backbone.extra.0.10", 1024 // width, 1024 // width, 1)  # fc7
    maps.append(x)
    channels = [512 // width, 1024 // width]
    for index, (inner, out, stride, padding) in enumerate(_EXTRAS, start=1):
        x = net.conv_relu(x, f"backbone.extra.{index}.0", channels[-1], inner // width, 1)
        x = net.conv_relu(x, f"backbone.extra.{index}.2", inner // width, out // width, 3, stride=stride,
                          padding=padding)
        maps.append(x)
        channels.append(out // width)
    locations, confidences = [], []
    for k, (feature, cin, boxes) in enumerate(zip(maps, channels, BOXES_PER_LOCATION)):
        locations.append(net.head(feature, f"head.regression_head.module_list.{k}", cin, boxes * 4, 4))
        confidences.append(net.head(feature, f"head.classification_head.module_list.{k}", cin, boxes * classes,
                                    classes))
    boxes = b.node("Concat", locations, "boxes_concat", axis=1)
    scores = b.node("Concat", confidences, "scores_concat", axis=1)
    net.params.finish()
    priors = sum(side * side * count for side, count in zip(FEATURE_MAPS, BOXES_PER_LOCATION))
    b.nodes += [helper.make_node("Identity", [boxes], ["boxes"], name="boxes"),
                helper.make_node("Identity", [scores], ["scores"], name="scores")]
    graph = helper.make_graph(b.nodes, b.name, [b.input],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, priors, 4]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, priors, classes])],
                              b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="mvu.models")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
