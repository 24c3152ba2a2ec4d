"""One-operator onnxruntime sessions: the engine under the host's exact int8 kernels."""

from __future__ import annotations

import numpy as np

__all__ = ["operator_session"]


def operator_session(op_type: str, node_inputs: list[str], inputs: dict[str, tuple[int, list]],
                     outputs: dict[str, tuple[int, list]], constants: dict[str, np.ndarray] | None = None, *,
                     domain: str = "", **attributes):
    """An onnxruntime CPU session running one ``op_type`` node on ``node_inputs`` (in the operator's order).

    ``inputs`` and ``outputs`` map names to (ONNX element type, shape);
    ``constants`` become initializers, which onnxruntime packs once. Idle
    worker threads do not spin, so they leave the numpy work between runs
    its cores.
    """
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    values = lambda specs: [helper.make_tensor_value_info(name, *spec) for name, spec in specs.items()]  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node(op_type, node_inputs, list(outputs), domain=domain, **attributes)], op_type.lower(),
        values(inputs), values(outputs),
        initializer=[numpy_helper.from_array(np.asarray(value), name) for name, value in (constants or {}).items()])
    opsets = [helper.make_opsetid("", 13)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
