"""Window LOADs (implicit im2col): convolutions from a channels-last tensor, equal to host im2col + the golden GEMM
on the reference (plans and the interpreter) and on the RTL, and the checks on their descriptors."""

import random

import numpy as np
import pytest
from conftest import NARROW, TINY

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import Buffer, Compute, Finish, Load, ProgramError, Store, Sync, decode
from mvu.hdl.contract.program import MemoryImage, Program, check_program
from mvu.hdl.contract.requantization import Requantization
from mvu.host.executors import reference
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.gemm import ConvolutionInput, GemmError, GemmProgram, golden_gemm
from mvu.host.runtime.runner import im2col

#: (batch, channels, height, width, filters, kernel, strides, pads, dilations)
SHAPES = {
    "3x3 s1 p1": (1, 8, 7, 6, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "3x3 s2 p1": (1, 8, 9, 8, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    "1x1 s2": (1, 12, 7, 9, 7, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
    "7x7 s2 p3": (1, 8, 11, 10, 4, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1)),
    "3x3 dilation 2": (1, 8, 9, 9, 5, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),
    "batch 2, odd, uneven pads": (2, 5, 5, 7, 3, (3, 2), (2, 1), (0, 1, 2, 0), (1, 2)),
}


def conv_case(rng, shape, signed=False):
    n, c, h, w, f, kernel, strides, pads, dilations = shape
    dtype, low, high = (np.int8, -128, 128) if signed else (np.uint8, 0, 256)
    x = rng.integers(low, high, (n, h, w, c), dtype=dtype)
    weights = rng.integers(-128, 128, (kernel[0] * kernel[1] * c, f), dtype=np.int8)
    zero_point = int(rng.integers(low, high))
    requant = Requantization.from_scales(rng.uniform(1e-4, 1e-2, f), rng.integers(-3000, 3000, f),
                                         out_zero_point=int(rng.integers(-5, 5)))
    conv = ConvolutionInput(x, kernel, strides, pads, dilations)
    patches, _, _ = im2col(x.transpose(0, 3, 1, 2), kernel, strides, pads, dilations, zero_point)
    return conv, weights, zero_point, requant, golden_gemm(patches, weights, zero_point, requant)


def run(executor, config, conv, weights, zero_point, requant):
    gemm = GemmProgram(config, conv, weights, act_zero_point=zero_point, requant=requant)
    assert any(ins.window for ins in gemm.program.instructions() if isinstance(ins, Load))
    executor.run(gemm.program)
    return gemm


@pytest.mark.parametrize("config", [TINY, NARROW, HardwareConfig()], ids=["tiny", "narrow", "default"])
@pytest.mark.parametrize("name", SHAPES)
def test_convolutions_equal_host_im2col_on_the_reference(name, config, plan):
    rng = np.random.default_rng(len(name))
    case = conv_case(rng, SHAPES[name], signed=name.startswith("batch"))
    gemm = run(ReferenceExecutor(config), config, *case[:4])
    assert (gemm.program.notes[ReferenceExecutor._NOTE].plan is not None) == plan
    np.testing.assert_array_equal(gemm.result(), case[4])


def test_a_rerun_reads_new_activations():
    rng = np.random.default_rng(3)
    conv, weights, zero_point, requant, _ = conv_case(rng, SHAPES["3x3 s2 p1"])
    gemm = run(ReferenceExecutor(NARROW), NARROW, conv, weights, zero_point, requant)
    again, *_ = conv_case(rng, SHAPES["3x3 s2 p1"])
    gemm.load_activations(again)
    ReferenceExecutor(NARROW).run(gemm.program)
    patches, _, _ = im2col(again.x.transpose(0, 3, 1, 2), again.kernel, again.strides, again.pads,
                           again.dilations, zero_point)
    np.testing.assert_array_equal(gemm.result(), golden_gemm(patches, weights, zero_point, requant))
    with pytest.raises(GemmError, match="convolution input like the program's"):
        gemm.load_activations(ConvolutionInput(again.x, (1, 1)))


def test_geometry_beyond_the_descriptor_is_refused():
    x = np.zeros((1, 4, 4, 8), np.uint8)
    with pytest.raises(GemmError, match="strides 1..15"):
        GemmProgram(TINY, ConvolutionInput(x, (1, 1), (16, 1)), np.zeros((8, 4), np.int8))
    with pytest.raises(GemmError, match="tap offsets"):
        GemmProgram(TINY, ConvolutionInput(x, (3, 3), (1, 1), (200, 0, 200, 0)), np.zeros((72, 4), np.int8))


def window(**fields) -> Load:
    base = dict(buffer=Buffer.ACT, sram_addr=0, count=6, dram_addr=64, dram_stride=4, window=True, row_stride=16,
                in_h=3, in_w=4, out_w=3, start_y=0, start_x=1, stride_y=1, stride_x=1, offset_y=-1, offset_x=-1,
                fill=9)
    return Load(**(base | fields))


def test_window_fields_round_trip():
    load = window(offset_y=-128, offset_x=127, stride_y=15, fill=255, start_y=65535, row_stride=(1 << 32) - 4)
    assert decode(load.encode()) == load


@pytest.mark.parametrize("fields, message", [
    (dict(in_w=0), "window input 3 x 0 is empty"),
    (dict(start_x=3), "start column 3 is not inside a row of out_w=3"),
    (dict(row_stride=6, buffer=Buffer.WGT), "multiples of the 4-byte memory beat"),
    (dict(in_h=8), "window input bytes 0x40..0xbf lie outside memory"),
    (dict(dram_addr=119, row_stride=5, dram_stride=3, in_h=1), "window input bytes 0x77..0x83 lie outside memory"),
], ids=["empty", "start column", "weights unaligned", "outside memory", "unaligned outside memory"])
def test_window_descriptors_are_checked(fields, message):
    memory = MemoryImage(128)
    program = Program.place(memory, [window(**fields), Finish()])
    with pytest.raises(ProgramError, match=message):
        check_program(TINY, program.memory, program.address, program.length)


def test_activation_windows_may_read_entries_at_any_byte():
    """A window LOAD into the activation buffer (a 3-channel stem's tap rows) needs no beat alignment."""
    memory = MemoryImage(128)
    memory.data[:] = np.arange(128)
    program = Program.place(memory, [window(dram_addr=3, row_stride=13, dram_stride=3, offset_x=0), Finish()])
    check_program(TINY, program.memory, program.address, program.length)
    ReferenceExecutor(TINY).run(program)


def test_padded_entries_read_no_memory_beyond_the_input():
    """A window that only pads may sit at the end of memory: entries outside the input read nothing."""
    memory = MemoryImage(128)
    memory.data[64:112] = np.arange(48)
    program = Program.place(memory, [window(), Finish()])
    machine = reference._Machine(TINY, program.memory.data)
    instruction = program.instructions()[0]
    machine.load(*(getattr(instruction, name) for name in reference._FIELDS[Load.opcode]))
    # Output pixels (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0): input pixel (oy - 1, ox - 1).
    expected = [[9] * 4, [9] * 4, [9] * 4, list(range(0, 4)), list(range(4, 8)), [9] * 4]
    np.testing.assert_array_equal(machine.act[:6], expected)


@pytest.mark.parametrize("name", SHAPES)
def test_convolutions_are_bit_exact_on_the_rtl(name, verilator_executors):
    """The RTL writes the same bytes as the reference, equal to host im2col + the golden GEMM."""
    case = conv_case(np.random.default_rng(len(name)), SHAPES[name], signed=name.startswith("batch"))
    rtl = run(verilator_executors(TINY), TINY, *case[:4])
    ref = run(ReferenceExecutor(TINY), TINY, *case[:4])
    np.testing.assert_array_equal(rtl.program.memory.data, ref.program.memory.data)
    np.testing.assert_array_equal(rtl.result(), case[4])


def test_window_loads_do_not_depend_on_memory_timing(verilator_executors):
    """A slow memory that takes few requests at a time: the window's entries in flight wait for it."""
    from mvu.sim.verilator_executor import MemoryModel

    executor = verilator_executors(TINY, MemoryModel(latency=97, bytes_per_cycle=1.5, max_outstanding=3))
    case = conv_case(np.random.default_rng(11), SHAPES["batch 2, odd, uneven pads"])
    np.testing.assert_array_equal(run(executor, TINY, *case[:4]).result(), case[4])


def test_resnet18_logits_are_unchanged_by_window_loads():
    """The reference executor with window LOADs gives the logits of host im2col and the golden products."""
    from mvu.host.compiler.recipes import compile_source, demo_photos
    from mvu.host.runtime.classify import Classifier

    config = HardwareConfig()
    package = compile_source("resnet18", config=config, progress=False)
    logits = {}
    for backend in ("numpy", "reference"):
        classifier = Classifier(package, backend)
        classifier.classify(demo_photos()[1])
        logits[backend] = classifier.runner.last_output
        lowering = {s.name: s.lowering for s in classifier.runner.stats if s.kind == "conv"}
    np.testing.assert_array_equal(logits["reference"], logits["numpy"])
    convs = [layer for layer in package.model.layers if layer.kind == "conv"]
    windowed = [layer.name for layer in convs if layer.attrs["kernel"] != [1, 1] or layer.attrs["strides"] != [1, 1]]
    assert [name for name, how in lowering.items() if how == "windows"] == windowed[1:]  # all but the stem
    assert lowering[windowed[0]] == "packed rows"  # 3 channels: a kernel row per K tile (tests/test_packed_rows.py)


def test_a_network_on_the_rtl_with_window_loads(verilator_executors):
    """A small classifier on the RTL: its 3x3 convolution over 8 channels reads windows; logits equal the
    definition's (host im2col) bit for bit."""
    from test_compiler import small_network

    from mvu.host.compiler.graph import import_onnx
    from mvu.host.compiler.quantize import calibrate, quantize_graph
    from mvu.host.runtime.runner import ModelRunner

    model = small_network()
    graph = import_onnx(model)
    images = np.random.default_rng(5).normal(0, 1, (8, 3, 16, 16)).astype(np.float32)
    quantized = quantize_graph(graph, calibrate(model, graph, images, progress=False))
    batch = quantized.input_q.quantize(images[:2])
    outputs = {}
    for backend, executor in (("numpy", None), ("verilator", verilator_executors(TINY))):
        runner = ModelRunner(quantized, TINY, backend, executor)
        outputs[backend] = runner.run_batch(batch)
    assert "windows" in {s.lowering for s in runner.stats}
    np.testing.assert_array_equal(outputs["verilator"], outputs["numpy"])


def window_program(config, rng: random.Random, length: int, unaligned: bool = False, serial: bool = False
                   ) -> Program:
    """Random window LOADs over a random channels-last tensor into 8-entry chunks (one LOAD per chunk, or two, the
    second usually continuing the first's pixels and K tile), weight tiles, products of whole chunks and raw stores; every
    chunk and tile loaded first. ``unaligned``: the tensor, its pixels and its rows start at any byte, and so do the
    K tiles (row-packed taps: any ``rows`` bytes from a pixel on). ``serial``: a SYNC after each instruction (the
    program passes no tokens, so units running side by side, as in the RTL, would race)."""
    memory = MemoryImage()
    memory.allocate(4096)
    memory.data[:] = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, memory.data.size)
    R, chunk = config.rows, 8
    in_h, in_w = rng.randint(1, 6), rng.randint(1, 6)
    channels = rng.randint(1, 2 * R) if unaligned else R * rng.randint(1, 3)
    row_stride = in_w * channels + (rng.randint(0, 5) if unaligned else 0)
    geometry = dict(dram_stride=channels, row_stride=row_stride, in_h=in_h, in_w=in_w, out_w=rng.randint(1, 5),
                    stride_y=rng.randint(1, 2), stride_x=rng.randint(1, 2), fill=rng.randrange(256))
    unit = 1 if unaligned else config.mem_bytes
    base = unit * rng.randrange((4096 - in_h * row_stride - 2 * R - 64) // unit)
    channel_offsets = range(0, channels, 1) if unaligned else range(0, channels, R)

    def window(entry: int, count: int, pixel: int, like: Load | None = None) -> Load:
        """A window LOAD of a random K tile, or of the K tile of ``like``."""
        start_y, start_x = divmod(pixel, geometry["out_w"])
        tile = (base + rng.choice(channel_offsets), rng.randint(-1, 1), rng.randint(-1, 1)) if like is None \
            else (like.dram_addr, like.offset_y, like.offset_x)
        return Load(Buffer.ACT, entry, count, tile[0], window=True, start_y=start_y, start_x=start_x,
                    offset_y=tile[1], offset_x=tile[2], **geometry)

    act_chunks, wgt_tiles = config.act_depth // chunk, config.wgt_depth // R
    instructions = [window(c * chunk, chunk, rng.randrange(12)) for c in range(act_chunks)]
    instructions += [Load(Buffer.WGT, t * R, R, config.mem_bytes * rng.randrange(900), config.mem_bytes)
                     for t in range(wgt_tiles)]
    computed = set()
    for _ in range(length):
        kind = rng.choice("LLWCCS")
        if kind == "L":
            c, pixel, half = rng.randrange(act_chunks), rng.randrange(12), rng.choice([chunk, rng.randint(1, 7)])
            instructions.append(window(c * chunk, half, pixel))
            if half < chunk:  # the rest of the chunk: usually the next pixels of the same K tile
                same = rng.random() < 0.8
                instructions.append(window(c * chunk + half, chunk - half, pixel + half if same else rng.randrange(12),
                                           instructions[-1] if same else None))
        elif kind == "W":
            instructions.append(Load(Buffer.WGT, rng.randrange(wgt_tiles) * R, R, config.mem_bytes * rng.randrange(900),
                                     config.mem_bytes * rng.choice([1, 4])))
        elif kind == "C":
            start = rng.randrange(config.acc_depth // chunk) * chunk
            instructions.append(Compute(act_addr=rng.randrange(act_chunks) * chunk, count=chunk, acc_addr=start,
                                        wgt_addr=rng.randrange(wgt_tiles) * R, accumulate=start in computed,
                                        act_zero_point=rng.randrange(256)))
            computed.add(start)
        elif computed:
            instructions.append(Store(acc_addr=rng.choice(sorted(computed)), count=chunk,
                                      dram_addr=memory.allocate(chunk * 4 * config.cols), dram_stride=4 * config.cols,
                                      raw=True))
    if serial:
        instructions = [step for instruction in instructions for step in (instruction, Sync())]
    instructions.append(Finish())
    return Program.place(memory, instructions)


@pytest.mark.parametrize("seed", range(12))
def test_random_window_programs_plan_as_they_are_interpreted(seed, monkeypatch):
    """Plans (scratch matrices per tensor) and the interpreter agree on random window programs, their entries at
    beats or at any byte; most are planned."""
    rng = random.Random(seed)
    planned = 0
    for _ in range(6):
        config = rng.choice([TINY, NARROW])
        program = window_program(config, rng, rng.randint(5, 60), unaligned=seed % 2 == 1)
        interpreted = program.memory.data.copy()
        ReferenceExecutor(config).run(program)
        planned += program.notes[ReferenceExecutor._NOTE].plan is not None
        with monkeypatch.context() as patch:
            patch.setattr(reference, "build_plan", lambda *args: None)
            image = MemoryImage()
            image.data = interpreted
            ReferenceExecutor(config).run(Program(image, program.address, program.length))
        np.testing.assert_array_equal(program.memory.data, interpreted)
    assert planned >= 2


@pytest.mark.parametrize("seed", range(4))
def test_window_entries_at_any_byte_are_bit_exact_on_the_rtl(seed, verilator_executors):
    """Random programs whose window entries start at any byte: the RTL leaves memory as the reference does."""
    rng = random.Random(100 + seed)
    for _ in range(3):
        program = window_program(TINY, rng, rng.randint(20, 60), unaligned=True, serial=True)
        expected = program.memory.data.copy()
        image = MemoryImage()
        image.data = expected
        ReferenceExecutor(TINY).run(Program(image, program.address, program.length))
        verilator_executors(TINY).run(program)
        np.testing.assert_array_equal(program.memory.data, expected)
