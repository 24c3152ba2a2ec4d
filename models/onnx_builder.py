"""A small builder for ONNX image-classifier graphs, on top of ``onnx.helper``."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["GraphBuilder", "OPSET"]

OPSET = 17


class GraphBuilder:
    """Appends nodes and initializers; every method returns the name of its output tensor."""

    def __init__(self, name: str, input_shape=(1, 3, 224, 224), input_name: str = "input"):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.input = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))
        self.input_name = input_name
        self._count = 0

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def constant(self, array: np.ndarray, prefix: str = "const") -> str:
        name = self.fresh(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str | None = None, **attributes) -> str:
        output = self.fresh(prefix or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def conv(self, x: str, weight: np.ndarray, bias: np.ndarray | None = None, *, stride: int = 1,
             padding: int | tuple[int, int, int, int] = 0, group: int = 1, dilation: int = 1) -> str:
        pads = [padding] * 4 if isinstance(padding, int) else list(padding)
        inputs = [x, self.constant(weight.astype(np.float32), "w")]
        if bias is not None:
            inputs.append(self.constant(bias.astype(np.float32), "b"))
        k = weight.shape[2:]
        return self.node("Conv", inputs, "conv", kernel_shape=list(k), strides=[stride, stride], pads=pads,
                         group=group, dilations=[dilation, dilation])

    def batch_norm(self, x: str, scale, bias, mean, var, epsilon: float = 1e-5) -> str:
        params = [self.constant(np.asarray(v, np.float32), "bn") for v in (scale, bias, mean, var)]
        return self.node("BatchNormalization", [x, *params], "bn", epsilon=epsilon)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def relu6(self, x: str) -> str:
        low, high = self.constant(np.float32(0.0), "min"), self.constant(np.float32(6.0), "max")
        return self.node("Clip", [x, low, high], "relu6")

    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b])

    def concat(self, inputs: list[str], axis: int = 1) -> str:
        return self.node("Concat", inputs, axis=axis)

    def max_pool(self, x: str, kernel: int, stride: int, padding: int = 0) -> str:
        return self.node("MaxPool", [x], kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=[padding] * 4)

    def average_pool(self, x: str, kernel: int, stride: int, padding: int = 0) -> str:
        return self.node("AveragePool", [x], kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=[padding] * 4)

    def global_average_pool(self, x: str) -> str:
        return self.node("GlobalAveragePool", [x], "gap")

    def flatten(self, x: str) -> str:
        return self.node("Flatten", [x], axis=1)

    def gemm(self, x: str, weight: np.ndarray, bias: np.ndarray) -> str:
        """``x @ weight.T + bias`` with ``weight`` shaped (out, in), as torch's Linear stores it."""
        return self.node("Gemm", [x, self.constant(weight.astype(np.float32), "fc_w"),
                                  self.constant(bias.astype(np.float32), "fc_b")], "fc", transB=1)

    def build(self, output: str, output_name: str = "logits", classes: int = 1000) -> onnx.ModelProto:
        """Finish the graph with ``output`` renamed ``output_name``; checks the model."""
        self.nodes.append(helper.make_node("Identity", [output], [output_name], name="output"))
        graph = helper.make_graph(self.nodes, self.name, [self.input],
                                  [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1, classes])],
                                  self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="mvu.models")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model
