"""Layers the host requantizes (affine, average pooling, concatenation, global average pooling) compute the
post-processor's arithmetic, ties included, checked against exact rational arithmetic."""

from fractions import Fraction

import numpy as np
import pytest

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.requantization import quantize_multiplier
from mvu.host.model.quantized import Layer, QuantizedModel, QuantParams
from mvu.host.runtime.runner import ModelRunner

IN_Q, OUT_Q = QuantParams(0.05, 128), QuantParams(0.1, 100)


def run_layer(layer: Layer, x: np.ndarray, tensor_q: dict[str, QuantParams]) -> np.ndarray:
    model = QuantizedModel("x", (1, *x.shape[1:]), tensor_q["x"], layer.output, [layer], tensor_q, {}, [])
    return ModelRunner(model, HardwareConfig(), "numpy").run_batch(x)


def fixed_point(value: int, ratio: float) -> int:
    """``value * ratio`` rounded half up, with the ratio's fixed-point multiplier and shift (docs/isa.md)."""
    multiplier, shift = quantize_multiplier(ratio)
    return int(np.floor(Fraction(value * multiplier, 1 << shift) + Fraction(1, 2)))


def test_affine_rounds_the_magnitude_half_up_and_applies_the_sign():
    ratios = [0.5, -0.5, -1.25, 0.0, 0.37, -0.37, 3.0]  # +-0.5 and -1.25 leave exact ties
    offsets = [0, 3, -7, 12, 250, -300, 1]
    layer = Layer("affine", "affine", ["x"], "y", "host", {"clamp": (20, 240), "ratio": ratios, "offset": offsets},
                  {}, OUT_Q)
    codes = np.arange(256, dtype=np.uint8)
    x = np.broadcast_to(codes.reshape(1, 1, 16, 16), (2, len(ratios), 16, 16)).copy()
    got = run_layer(layer, x, {"x": IN_Q, "y": OUT_Q})
    for channel, (ratio, offset) in enumerate(zip(ratios, offsets)):
        for code in codes:
            centred = int(code) - IN_Q.zero_point
            scaled = 0 if ratio == 0 else int(np.sign(ratio)) * fixed_point(centred, abs(ratio))
            expected = min(max(scaled + offset + OUT_Q.zero_point, 20), 240)
            assert got[1, channel].reshape(-1)[code] == expected, (ratio, offset, int(code))


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pooling_rescales_each_window_sum_by_its_count(count_include_pad):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 3, 5, 5)).astype(np.uint8)
    layer = Layer("avgpool", "pool", ["x"], "y", "host", {"kernel": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                                           "count_include_pad": count_include_pad}, {}, OUT_Q)
    got = run_layer(layer, x, {"x": IN_Q, "y": OUT_Q})
    centred = np.pad(x.astype(np.int64) - IN_Q.zero_point, ((0, 0), (0, 0), (1, 1), (1, 1)))
    inside = np.pad(np.ones((5, 5), np.int64), 1)
    for i in range(3):
        for j in range(3):
            window = (slice(2 * i, 2 * i + 3), slice(2 * j, 2 * j + 3))
            count = 9 if count_include_pad else int(inside[window].sum())
            ratio = IN_Q.scale / (OUT_Q.scale * count)
            for n in range(2):
                for c in range(3):
                    total = int(centred[n, c][window].sum())
                    expected = min(max(fixed_point(total, ratio) + OUT_Q.zero_point, 0), 255)
                    assert got[n, c, i, j] == expected


def test_concatenation_requantizes_each_input_into_the_output():
    a_q, b_q = QuantParams(0.05, 128), QuantParams(0.2, 3)  # a ratio of 0.5 leaves ties on odd codes
    a = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    b = a[:, :, ::-1].copy()
    layer = Layer("concat", "concat", ["a", "b"], "y", "host", {"axis": 1}, {}, OUT_Q)
    model = QuantizedModel("a", (1, 1, 16, 16), a_q, "y", [layer], {"a": a_q, "b": b_q, "y": OUT_Q}, {}, [])
    got = ModelRunner(model, HardwareConfig(), "numpy")._concat(layer, {"a": a, "b": b}, None)
    for part, (values, q) in enumerate(((a, a_q), (b, b_q))):
        expected = [min(max(fixed_point(int(code) - q.zero_point, q.scale / OUT_Q.scale) + OUT_Q.zero_point, 0), 255)
                    for code in values.reshape(-1)]
        assert got[0, part].reshape(-1).tolist() == expected


def test_global_average_pooling_matches_onnxruntime():
    from onnx import TensorProto

    from mvu.host.executors.onnxruntime_sessions import operator_session

    x = np.random.default_rng(2).integers(0, 256, (3, 4, 7, 7)).astype(np.uint8)
    x[0] = 128 + np.arange(49).reshape(7, 7) % 3  # sums that leave ties
    layer = Layer("gap", "gap", ["x"], "y", "host", {}, {}, OUT_Q)
    got = run_layer(layer, x, {"x": IN_Q, "y": OUT_Q})
    constants = {"x_scale": np.float32(IN_Q.scale), "x_zero_point": np.uint8(IN_Q.zero_point),
                 "y_scale": np.float32(OUT_Q.scale), "y_zero_point": np.uint8(OUT_Q.zero_point)}
    session = operator_session("QLinearGlobalAveragePool", ["x", *constants], {"x": (TensorProto.UINT8, list(x.shape))},
                               {"y": (TensorProto.UINT8, [3, 4, 1, 1])}, constants, domain="com.microsoft",
                               channels_last=0)
    np.testing.assert_array_equal(got, session.run(None, {"x": x})[0])
