"""The STOREs' requantizing residual add: the integer model against onnxruntime's float32 arithmetic, and GEMMs
with an addend (and a table) on the reference and the RTL against the definition."""

import numpy as np
import pytest
from conftest import TINY

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.requantization import Requantization
from mvu.hdl.contract.residual_add import ResidualAdd, round_significant
from mvu.host.executors.kernels import qlinear_add
from mvu.host.executors.onnxruntime_add import add_coefficients
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.gemm import GemmProgram, golden_gemm


def random_quantizations(rng, count=3):
    return [(float(rng.uniform(1e-3, 0.3)), int(rng.integers(0, 256))) for _ in range(count)]


def test_integer_model_is_onnxruntimes_float32_add():
    """Both operand orders, with a clamp, on random quantizations: the same codes as the float32 kernel."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        quantizations = random_quantizations(rng)
        (ratio_a, ratio_b), start = add_coefficients(quantizations[:2], quantizations[2])
        a, b = (rng.integers(0, 256, 257, dtype=np.uint8) for _ in range(2))
        low, high = sorted(int(x) for x in rng.integers(0, 256, 2))
        want = qlinear_add(a, b, ratio_a, ratio_b, start, low, high)
        as_a = ResidualAdd.from_float32(ratio_a, ratio_b, start, low=low, high=high)
        as_b = ResidualAdd.from_float32(ratio_b, ratio_a, start, q_inner=True, low=low, high=high)
        np.testing.assert_array_equal(as_a(a, b), want)
        np.testing.assert_array_equal(as_b(b, a), want)


def test_exact_ties_round_half_to_even():
    """0.5 * q - 0.25 lands on halves and on quarters: rint takes halves to even."""
    add = ResidualAdd.from_float32(0.5, 0.0, -0.25)
    q = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(add(q, np.zeros(256, np.uint8)), np.clip(np.rint(q * 0.5 - 0.25), 0, 255))
    assert round_significant(np.int64((1 << 25) + 1)) == 1 << 25  # a tie in float32 rounding: to even
    assert round_significant(np.int64((1 << 25) + 3)) == (1 << 25) + 4


def test_zero_coefficients_are_an_add_of_nothing():
    """All three coefficients zero (an add of two constant-zero tensors): every output is the clamped zero."""
    add = ResidualAdd.from_float32(0.0, 0.0, 0.0, low=3, high=200)
    assert (add.ratio_q, add.ratio_b, add.start, add.shift) == (0, 0, 0, 0)
    q = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(add(q, q[::-1].copy()), np.full(256, 3))


def test_coefficients_outside_the_grid_are_refused():
    with pytest.raises(ValueError, match="fraction bits"):
        ResidualAdd.from_float32(np.float32(2.0 ** -70), 1.0, 0.0)
    with pytest.raises(ValueError, match="below 2\\*\\*52"):
        ResidualAdd.from_float32(np.float32(2.0 ** 40), np.float32(2.0 ** -20), 0.0)
    block = ResidualAdd.from_float32(0.75, 1.5, -3.125, q_inner=True, low=4, high=200, addend_offset=-64).block()
    assert ResidualAdd.from_block(block) == ResidualAdd.from_float32(0.75, 1.5, -3.125, q_inner=True, low=4,
                                                                     high=200, addend_offset=-64)


def residual_gemm(rng, m, k, n, *, float32, table):
    """Operands of a uint8-output GEMM with an addend and a real add's coefficients (and maybe a table)."""
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, (k, n), dtype=np.int8)
    make = Requantization.from_float32_scales if float32 else Requantization.from_scales
    requant = make(rng.uniform(1e-4, 1e-3, n), rng.integers(-3000, 3000, n), out_zero_point=int(rng.integers(0, 256)),
                   clamp_min=0, clamp_max=255)
    quantizations = random_quantizations(rng)
    (ratio_a, ratio_b), start = add_coefficients(quantizations[:2], quantizations[2])
    q_inner = bool(rng.integers(0, 2))
    ratios = (ratio_b, ratio_a) if q_inner else (ratio_a, ratio_b)
    add = ResidualAdd.from_float32(*ratios, start, q_inner=q_inner, low=int(rng.integers(0, 60)), high=255)
    addend = rng.integers(0, 256, (m, n), dtype=np.uint8)
    lookup = rng.integers(0, 256, 256, dtype=np.uint8) if table else None
    return dict(a=a, w=w, act_zero_point=int(rng.integers(0, 256)), requant=requant, table=lookup, addend=addend,
                residual=add)


def golden(case):
    return golden_gemm(case["a"], case["w"], case["act_zero_point"], case["requant"], case["table"], case["addend"],
                       case["residual"])


@pytest.mark.parametrize("config", [TINY, HardwareConfig()], ids=["tiny", "default"])
def test_reference_gemms_with_an_addend_follow_the_definition(config):
    rng = np.random.default_rng(3)
    for trial in range(8):
        m, k, n = (int(x) for x in rng.integers(1, 80, 3))
        case = residual_gemm(rng, m, k, n, float32=bool(trial % 2), table=trial % 4 >= 2)
        gemm = GemmProgram(config, case["a"], case["w"], act_zero_point=case["act_zero_point"],
                           requant=case["requant"], table=case["table"], addend=case["addend"],
                           residual=case["residual"])
        executor = ReferenceExecutor(config)
        executor.run(gemm.program)
        want = golden(case)
        np.testing.assert_array_equal(gemm.result(), want)
        # That ran the program's plan; the interpreter (STORE by STORE) agrees.
        prepared = gemm.program.notes[ReferenceExecutor._NOTE]
        assert prepared.plan is not None
        gemm.load_activations(case["a"])
        executor._interpret(prepared.columns, gemm.program.memory.data)
        np.testing.assert_array_equal(gemm.result(), want)
        # The addend changes the outputs (the add is not a no-op), and a new addend reruns the program.
        assert (want != golden(case | {"residual": None, "addend": None})).any()
        case["addend"] = rng.integers(0, 256, (m, n), dtype=np.uint8)
        gemm.load_activations(case["a"])
        gemm.load_addend(case["addend"])
        ReferenceExecutor(config).run(gemm.program)
        np.testing.assert_array_equal(gemm.result(), golden(case))


@pytest.mark.parametrize("config", [TINY, HardwareConfig()], ids=["tiny", "default"])
def test_rtl_gemms_with_an_addend_are_bit_exact(config, verilator_executors):
    """The RTL, the reference and the definition agree on GEMMs whose STOREs add an addend (half with a table)."""
    executor = verilator_executors(config)
    rng = np.random.default_rng(11)
    for trial in range(4):
        m, k, n = (int(x) for x in rng.integers(1, 70, 3))
        case = residual_gemm(rng, m, k, n, float32=bool(trial % 2), table=trial >= 2)
        programs = [GemmProgram(config, case["a"], case["w"], act_zero_point=case["act_zero_point"],
                                requant=case["requant"], table=case["table"], addend=case["addend"],
                                residual=case["residual"]) for _ in range(2)]
        executor.run(programs[0].program)
        ReferenceExecutor(config).run(programs[1].program)
        np.testing.assert_array_equal(programs[0].result(), golden(case))
        np.testing.assert_array_equal(programs[1].result(), golden(case))


def test_resnet18_adds_run_in_the_stores_with_identical_logits():
    """ResNet-18 (compiled from its recipe) on the reference: every Add comes out of its convolution's STOREs, and
    the logits equal those of the host's adds bit for bit."""
    from mvu.host.compiler.recipes import compile_source, demo_photos
    from mvu.host.runtime.classify import Classifier
    from mvu.host.runtime.fused_adds import FUSED_ADD

    config = HardwareConfig()
    package = compile_source("resnet18", config=config, progress=False)
    fused, host = Classifier(package, "reference"), Classifier(package, "reference")
    host.runner._fused_adds = {}
    for classifier in (fused, host):
        classifier.classify(demo_photos()[1])
    adds = [stats for stats in fused.runner.stats if stats.kind == "add"]
    assert len(adds) == 8 and all(stats.placement == FUSED_ADD for stats in adds)
    assert all(stats.placement != FUSED_ADD for stats in host.runner.stats)
    np.testing.assert_array_equal(fused.runner.last_output, host.runner.last_output)


def _block_model(*, conv_clamp=(0, 255), readers=1, table=False, group=1, late_shortcut=False):
    """input -> conv "s" (the shortcut) and conv "c" -> add(c, s): the residual block the runner fuses."""
    from mvu.host.model.quantized import Layer, QuantizedModel, QuantParams

    q = {name: QuantParams(0.05 + 0.01 * i, 10 * i) for i, name in enumerate(["x", "s", "c", "y", "z"])}
    conv = lambda name, source, clamp: Layer("conv", name, [source], name, "accelerator",
                                             {"group": group if name == "c" else 1, "clamp": clamp},
                                             {"table": np.arange(256, dtype=np.uint8)} if table and name == "c" else {},
                                             q[name])
    shortcut, main = conv("s", "x", (0, 255)), conv("c", "x", conv_clamp)
    layers = [main, shortcut] if late_shortcut else [shortcut, main]
    layers.append(Layer("add", "y", ["c", "s"], "y", "host", {"clamp": (10, 255)}, {}, q["y"]))
    if readers > 1:
        layers.append(Layer("add", "z", ["c", "y"], "z", "host", {"clamp": (0, 255)}, {}, q["z"]))
    return QuantizedModel("x", (1, 3, 8, 8), q["x"], layers[-1].output, layers, q, {}, [])


@pytest.mark.parametrize("options, fused", [
    ({}, "c"),
    ({"conv_clamp": (-128, 127)}, None),  # int8 codes
    ({"readers": 2}, None),  # the convolution's output is read twice
    ({"table": True}, None),  # its table would come after the add
    ({"group": 2}, None),  # grouped
    ({"late_shortcut": True}, "s"),  # the shortcut is computed after the convolution: the shortcut's STOREs add
])
def test_which_adds_the_stores_take(options, fused):
    """Only the later of the two convolutions can add (its addend must exist), and only when it qualifies."""
    from mvu.host.runtime.fused_adds import fused_adds

    found = fused_adds(_block_model(**options))
    assert list(found) == ([] if fused is None else [fused])
    if fused is not None:
        add = found[fused]
        assert add.addend == ("s" if fused == "c" else "c") and add.residual.q_inner == (fused == "s")
        assert (add.residual.low, add.residual.high) == (10, 255)


@pytest.mark.parametrize("readers, joins", [(1, True), (2, False)])
def test_a_table_that_alone_reads_the_add_joins_its_stores(readers, joins):
    """The STOREs look up after adding: a table that alone reads the Add's output runs there too, one whose input
    another layer also reads stays on the host."""
    from mvu.host.model.quantized import Layer
    from mvu.host.runtime.fused_adds import fused_adds

    model = _block_model()
    for index in range(readers):
        model.layers.append(Layer("lut", f"t{index}", ["y"], f"t{index}", "host", {},
                                  {"table": np.arange(256, dtype=np.uint8)[::-1].copy()}, model.tensor_q["y"]))
    model.output = model.layers[-1].output
    table = fused_adds(model)["c"].table
    assert (table.name if table else None) == ("t0" if joins else None)


def test_a_residual_block_with_a_table_after_its_add_is_bit_exact_on_the_rtl(verilator_executors):
    """Conv, 1x1 Conv, Add of the two, Sigmoid: the Add and then the Sigmoid's table run in the 1x1 Conv's STOREs;
    numpy (host adds and table), reference and RTL give the same tensors and logits."""
    from conftest import TINY as config
    from test_import_ops import SIZE, images, network

    from mvu.host.compiler.graph import import_onnx
    from mvu.host.compiler.quantize import calibrate, quantize_graph
    from mvu.host.runtime.fused_adds import FUSED_ADD, FUSED_TABLE
    from mvu.host.runtime.runner import ModelRunner

    def body(g, x, rng):
        added = g.add(g.conv(x, rng.normal(0, 0.3, (8, 8, 1, 1)), rng.normal(0, 0.1, 8)), x)
        return g.node("Sigmoid", [added])

    model = network(body)
    graph = import_onnx(model)
    quantized = quantize_graph(graph, calibrate(model, graph, images(16, 1, SIZE), progress=False))
    assert [layer.kind for layer in quantized.layers][:4] == ["conv", "conv", "add", "lut"]
    batch = quantized.input_q.quantize(images(3, 2, SIZE))
    runners = {backend: ModelRunner(quantized, config, backend, executor) for backend, executor in (
        ("numpy", None), ("reference", None), ("verilator", verilator_executors(config)))}
    logits = {backend: runner.run_batch(batch) for backend, runner in runners.items()}
    for backend in ("reference", "verilator"):
        np.testing.assert_array_equal(logits[backend], logits["numpy"])
        stats = {s.kind: s.placement for s in runners[backend].stats}
        assert stats["add"] == FUSED_ADD and stats["lut"] == FUSED_TABLE
        for name, tensor in runners[backend].tensors.items():
            np.testing.assert_array_equal(tensor, runners["numpy"].tensors[name], err_msg=name)
    table = quantized.layers[3]
    assert len(np.unique(runners["verilator"].tensors[table.output])) > 16  # the table's output varies
    for layer in quantized.layers[1:3]:  # the fused convolution's and the Add's outputs are never materialized
        assert layer.output not in runners["verilator"].tensors


def test_a_configuration_without_the_residual_add_refuses_it_and_adds_on_the_host():
    """The ULX3S preset leaves the residual add out (its 48 multipliers and its timing): a program that adds is
    refused naming the option, and the runner keeps every Add on the host there."""
    import dataclasses

    from mvu.hdl.contract.isa import ProgramError
    from mvu.host.compiler.recipes import compile_source, demo_photos
    from mvu.host.runtime.classify import Classifier

    config = dataclasses.replace(TINY, residual_add=False)
    case = residual_gemm(np.random.default_rng(5), 9, 20, 7, float32=False, table=False)
    gemm = GemmProgram(config, case["a"], case["w"], act_zero_point=case["act_zero_point"], requant=case["requant"],
                       addend=case["addend"], residual=case["residual"])
    with pytest.raises(ProgramError, match="the residual add is not built into this configuration"):
        ReferenceExecutor(config).run(gemm.program)
    config = dataclasses.replace(HardwareConfig(), residual_add=False)
    package = compile_source("resnet18", config=config, progress=False)
    classifier = Classifier(package, "reference")
    classifier.classify(demo_photos()[1])
    adds = [stats for stats in classifier.runner.stats if stats.kind == "add"]
    assert len(adds) == 8 and all(stats.placement == "host" for stats in adds)
