"""Row-packed taps: convolutions over few channels (the 3-channel stem) whose K tiles are whole kernel rows read by
window LOADs at any byte, equal to host im2col + the golden GEMM on the reference (plans and the interpreter) and
on the RTL; refusals; the runner's stem on them."""

import numpy as np
import pytest
from conftest import NARROW, TINY
from test_window_loads import conv_case

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import Load
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.gemm import ConvolutionInput, GemmError, golden_gemm
from mvu.host.packed_rows import RowPackedProgram, packed_rows_limit
from mvu.host.runtime.runner import im2col

DEFAULT = HardwareConfig()

#: name -> (configuration, (batch, channels, height, width, filters, kernel, strides, pads, dilations)): each kernel
#: row's taps and channels fit a K tile of the configuration's rows.
CASES = {
    "7x7 s2 p3 stem": (DEFAULT, (1, 3, 19, 17, 7, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1))),
    "3x3 s2 uneven pads": (DEFAULT, (1, 3, 9, 8, 40, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1))),
    "3x3 s1 p1, 4 channels": (DEFAULT, (1, 4, 7, 6, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))),
    "3x3 s2 p1, batch 2": (DEFAULT, (2, 3, 10, 11, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1))),
    "3x3 dilation_y 2": (DEFAULT, (1, 3, 11, 9, 5, (3, 3), (1, 2), (2, 1, 2, 1), (2, 1))),
    "narrow 7x7 s2 p3, 1 channel": (NARROW, (1, 1, 15, 13, 17, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1))),
    "narrow 3x3 s2 uneven pads, batch 2": (NARROW, (2, 2, 9, 8, 6, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1))),
    "narrow 5x2 dilation_y 2": (NARROW, (1, 3, 12, 7, 5, (5, 2), (1, 3), (3, 0, 2, 2), (2, 1))),
    "tiny 3x1 s2, 3 channels": (TINY, (1, 3, 9, 8, 6, (3, 1), (2, 2), (1, 0, 1, 0), (1, 1))),
    "tiny 2x2 uneven pads, batch 2": (TINY, (2, 2, 6, 7, 5, (2, 2), (1, 2), (0, 1, 1, 0), (1, 1))),
    "tiny 3x3 s1 p1, 1 channel": (TINY, (1, 1, 7, 6, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))),
}


def definition(conv, weights, zero_point, requant):
    patches, _, _ = im2col(conv.x.transpose(0, 3, 1, 2), conv.kernel, conv.strides, conv.pads, conv.dilations,
                           zero_point)
    return golden_gemm(patches, weights, zero_point, requant)


def run(executor, config, conv, weights, zero_point, requant):
    program = RowPackedProgram(config, conv, weights, act_zero_point=zero_point, requant=requant)
    executor.run(program.program)
    return program


@pytest.mark.parametrize("name", CASES)
def test_row_packed_convolutions_equal_host_im2col_on_the_reference(name, plan):
    config, shape = CASES[name]
    conv, weights, zero_point, requant, expected = conv_case(np.random.default_rng(len(name)), shape,
                                                             signed="batch" in name)
    program = run(ReferenceExecutor(config), config, conv, weights, zero_point, requant)
    assert (program.program.notes[ReferenceExecutor._NOTE].plan is not None) == plan
    np.testing.assert_array_equal(program.result(), expected)
    assert len(np.unique(expected)) > min(20, expected.size // 4)  # not saturated
    loads = [ins for ins in program.program.instructions() if isinstance(ins, Load) and ins.window]
    assert loads and {ins.dram_stride for ins in loads} == {shape[1]}  # entries at every pixel, any byte
    assert program.k_pad == conv.kernel[0] * config.rows and program.macs == expected.size * weights.shape[0]


def test_a_rerun_reads_new_activations():
    config, shape = CASES["3x3 s2 uneven pads"]
    rng = np.random.default_rng(3)
    conv, weights, zero_point, requant, _ = conv_case(rng, shape)
    program = run(ReferenceExecutor(config), config, conv, weights, zero_point, requant)
    again, *_ = conv_case(rng, shape)
    program.load_activations(again)
    ReferenceExecutor(config).run(program.program)
    np.testing.assert_array_equal(program.result(), definition(again, weights, zero_point, requant))
    with pytest.raises(GemmError, match="convolution input like the program's"):
        program.load_activations(ConvolutionInput(again.x, (3, 3), (1, 1)))


@pytest.mark.parametrize("kernel, channels, dilations, message", [
    ((3, 3), 4, (1, 1), "a kernel row of 3 taps x 4 channels does not fit a K tile of 8 lanes"),
    ((3, 3), 2, (1, 2), "dilation 1 along the width, not 2"),
    ((3, 3), 2, (99, 1), "row-packed taps .*tap offsets"),
])
def test_what_row_packed_taps_cannot_express_is_refused(kernel, channels, dilations, message):
    conv = ConvolutionInput(np.zeros((1, 200, 9, channels), np.uint8), kernel, (1, 1), (1, 1, 1, 1), dilations)
    assert packed_rows_limit(NARROW, conv) is not None
    with pytest.raises(GemmError, match=message):
        RowPackedProgram(NARROW, conv, np.zeros((kernel[0] * kernel[1] * channels, 4), np.int8))


def test_the_runner_reads_the_stem_by_packed_rows(toy_package_path):
    """The toy classifier's 3-channel stem runs row-packed on the reference (its 16-channel 3x3 convolution, whose
    rows do not fit a K tile, as host patches): the logits of the products' definition, bit for bit."""
    from mvu.host.model.package import load_package
    from mvu.host.runtime.runner import ModelRunner

    package = load_package(toy_package_path, DEFAULT)
    images = np.random.default_rng(7).integers(0, 256, (2, *package.model.input_shape[1:]), dtype=np.uint8)
    logits, lowering = {}, {}
    for backend in ("numpy", "reference"):
        runner = ModelRunner(package.model, DEFAULT, backend)
        logits[backend] = runner.run_batch(images)
        lowering[backend] = [s.lowering for s in runner.stats if s.kind == "conv"]
    np.testing.assert_array_equal(logits["reference"], logits["numpy"])
    assert lowering["reference"] == ["packed rows", "im2col"]
    assert lowering["numpy"] == ["im2col", "im2col"]


@pytest.mark.parametrize("name", ["tiny 3x1 s2, 3 channels", "tiny 2x2 uneven pads, batch 2"])
def test_row_packed_convolutions_are_bit_exact_on_the_rtl(name, verilator_executors):
    """The RTL reads entries at any byte as the reference does: the same memory image, equal to host im2col."""
    config, shape = CASES[name]
    conv, weights, zero_point, requant, expected = conv_case(np.random.default_rng(len(name)), shape,
                                                             signed="batch" in name)
    rtl = run(verilator_executors(config), config, conv, weights, zero_point, requant)
    ref = run(ReferenceExecutor(config), config, conv, weights, zero_point, requant)
    np.testing.assert_array_equal(rtl.program.memory.data, ref.program.memory.data)
    np.testing.assert_array_equal(rtl.result(), expected)
