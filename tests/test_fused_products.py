"""Products with float32 requantization fused into onnxruntime's QLinearConv, against the post-processor's
arithmetic, and the reference executor's use of them."""

import numpy as np
import pytest
from conftest import NARROW, cpu_flags

from mvu.hdl.contract.requantization import Requantization, float32_significand, requantize
from mvu.host.executors.fused_products import FusedProduct, fused_product
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.gemm import GemmProgram, golden_gemm


def random_case(rng, act_signed: bool):
    """Activations with saturating extremes, weights, and float32-scale parameters with ties among the scales."""
    m, k, n = (int(v) for v in rng.integers([1, 1, 1], [90, 700, 70]))
    low, high = (-128, 127) if act_signed else (0, 255)
    x = rng.integers(low, high + 1, (m, k))
    x[: m // 3] = high
    w = rng.integers(-128, 128, (k, n))
    w[:, : n // 3] = rng.choice([-128, 127], (k, n // 3))
    scale = rng.uniform(1e-5, 1e-2, n).astype(np.float32)
    scale[: n // 4] = rng.choice(np.float32([0.5, 0.25, 1.5, 3e4, 2.0 ** -40, 0]), n // 4)
    multiplier, shift = np.array([float32_significand(s) for s in scale]).T
    bias = rng.integers(-(1 << 20), 1 << 20, n)
    zero_point = int(rng.integers(low, high + 1))
    return x.astype(np.int8 if act_signed else np.uint8), zero_point, w.astype(np.int8), \
        np.stack([bias, multiplier, shift]).astype(np.int32)


def expected_output(x, zero_point, w, parameters, out_zero_point, low, high):
    sums = ((x.astype(np.int64) - zero_point) @ w.astype(np.int64)).astype(np.int32)
    return requantize(sums, *parameters, out_zero_point, low, high, float32_scale=True)


def fused_or_skip(w, parameters, **settings):
    product = fused_product(w, parameters, **settings)
    if product is None:
        pytest.skip("onnxruntime's int8 kernels are not exact on this machine; the general path runs instead")
    return product


@pytest.mark.parametrize("seed", range(6))
def test_fused_products_give_the_post_processors_bytes(seed):
    rng = np.random.default_rng(seed)
    signed = bool(seed % 2)
    x, zero_point, w, parameters = random_case(rng, signed)
    low, high = [(0, 255), (-128, 127), (0, 6), (-20, 90), (3, 250), (-128, 0)][seed]
    out_zero_point = int(rng.integers(max(low, -128 if low < 0 else 0), high + 1))
    product = fused_or_skip(w, parameters, act_signed=signed, act_zero_point=zero_point,
                            out_zero_point=out_zero_point, clamp_min=low, clamp_max=high)
    got = np.full((len(x), w.shape[1]), 77, np.uint8)
    product.run(x.view(np.uint8), got)
    np.testing.assert_array_equal(got, expected_output(x, zero_point, w, parameters, out_zero_point, low, high))


def test_fused_products_write_rows_with_gaps_between_them():
    x, zero_point, w, parameters = random_case(np.random.default_rng(11), False)
    product = fused_or_skip(w, parameters, act_signed=False, act_zero_point=zero_point, out_zero_point=9,
                            clamp_min=0, clamp_max=255)
    memory = np.full((len(x), w.shape[1] + 5), 77, np.uint8)
    product.run(x, memory[:, 2:-3])
    np.testing.assert_array_equal(memory[:, 2:-3], expected_output(x, zero_point, w, parameters, 9, 0, 255))
    assert (memory[:, :2] == 77).all() and (memory[:, -3:] == 77).all()


def test_a_fused_product_notices_any_changed_weight_or_parameter():
    x, zero_point, w, parameters = random_case(np.random.default_rng(12), True)
    product = fused_or_skip(w, parameters, act_signed=True, act_zero_point=zero_point, out_zero_point=0,
                            clamp_min=-128, clamp_max=127)
    assert product.matches(w.copy(), parameters.copy())
    for which in range(2):
        operands = [w.copy(), parameters.copy()]
        operands[which].reshape(-1).view(np.uint8)[-1] ^= 1
        assert not product.matches(*operands)


def test_mixed_signedness_and_out_of_range_zero_points_are_left_to_the_general_path():
    x, zero_point, w, parameters = random_case(np.random.default_rng(13), False)
    settings = dict(act_signed=False, act_zero_point=zero_point, clamp_max=127)
    assert fused_product(w, parameters, out_zero_point=0, clamp_min=-128, **settings) is None
    assert fused_product(w, parameters, out_zero_point=300, clamp_min=0, **settings) is None
    with pytest.raises(ValueError, match=r"zero point 300 and clamp range 0\.\.127 must lie within 0\.\.255"):
        FusedProduct(w, parameters, out_zero_point=300, clamp_min=0, **settings)


def test_the_reference_repacks_when_a_programs_weights_or_parameters_change():
    rng = np.random.default_rng(14)
    a = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    w = rng.integers(-128, 128, (50, 30), dtype=np.int8)
    requant = Requantization.from_float32_scales(rng.uniform(1e-4, 1e-2, 30), rng.integers(-999, 999, 30),
                                                 out_zero_point=4, clamp_min=0, clamp_max=255)
    gemm = GemmProgram(NARROW, a, w, act_zero_point=7, requant=requant)
    executor = ReferenceExecutor(NARROW)
    executor.run(gemm.program)
    np.testing.assert_array_equal(gemm.result(), golden_gemm(a, w, 7, requant))
    plan = gemm.program.notes[executor._NOTE].plan
    if not any(plan._fused.values()):
        pytest.skip("onnxruntime's int8 kernels are not exact on this machine; the general path runs instead")

    data = gemm.program.memory.data
    w_pad = np.zeros((56, 32), np.int8)  # K and N padded to whole tiles of NARROW (8 x 16)
    w_pad[:50, :30] = w
    w_at = data.tobytes().find(w_pad.tobytes())
    data[w_at + 3 * 32 + 5] ^= 0x55
    w[3, 5] = (w[3, 5].view(np.uint8) ^ 0x55).view(np.int8)
    gemm.load_activations(a)
    executor.run(gemm.program)
    np.testing.assert_array_equal(gemm.result(), golden_gemm(a, w, 7, requant))

    bias_at = data.tobytes().find(requant.bias.astype("<i4").tobytes()[:64])
    data[bias_at:bias_at + 4] = np.array([123456], "<i4").view(np.uint8)
    changed = Requantization(np.concatenate([[123456], requant.bias[1:]]), requant.multiplier, requant.shift,
                             out_zero_point=4, clamp_min=0, clamp_max=255, float32_scale=True)
    gemm.load_activations(a)
    executor.run(gemm.program)
    np.testing.assert_array_equal(gemm.result(), golden_gemm(a, w, 7, changed))


def test_the_fused_path_is_taken_on_processors_with_int8_dot_products():
    """onnxruntime's VNNI kernels accumulate int8 products in int32 without saturating: there the self-check
    must pass, so the tests above run rather than skip."""
    if not cpu_flags() & {"avx512_vnni", "avx_vnni"}:
        pytest.skip("no VNNI instructions here; onnxruntime may saturate 16-bit sums and is then not used")
    x, zero_point, w, parameters = random_case(np.random.default_rng(15), False)
    for act_signed in (False, True):
        assert fused_product(w, parameters, act_signed=act_signed, act_zero_point=0, out_zero_point=0,
                             clamp_min=-128 if act_signed else 0, clamp_max=127) is not None
