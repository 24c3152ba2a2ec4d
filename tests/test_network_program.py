"""A whole network as one program: the layers' programs linked over one memory image, the host writing the input and
reading the results; bit for bit the layer-by-layer run, on the reference and the RTL."""

import dataclasses

import numpy as np
import onnx
import pytest
from conftest import NARROW, TINY

from mvu.hdl.contract.isa import Opcode, decode_columns
from mvu.host.compiler.graph import import_onnx
from mvu.host.compiler.quantize import calibrate, quantize_graph
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.model.quantized import VIEW
from mvu.host.network_program import NetworkProgram
from mvu.host.runtime.fused_adds import FUSED_ADD
from mvu.host.runtime.runner import ModelRunner
from mvu.models.onnx_builder import GraphBuilder


def small_network(size: int = 8) -> onnx.ModelProto:
    """Conv+ReLU, MaxPool, Conv+ReLU6, depthwise Conv, 1x1 Conv and a residual Add, GAP, FC (like
    tests/test_compiler.py's, on an input small enough for TINY's buffers to pool globally)."""
    rng = np.random.default_rng(0)
    g = GraphBuilder("small", (1, 3, size, size))
    x = g.max_pool(g.relu(g.conv("input", rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8), padding=1)), 3, 2, 1)
    y = g.relu6(g.conv(x, rng.normal(0, 0.2, (8, 8, 3, 3)), rng.normal(0, 0.1, 8), padding=1))
    y = g.conv(y, rng.normal(0, 0.3, (8, 1, 3, 3)), rng.normal(0, 0.1, 8), padding=1, group=8)
    x = g.add(x, g.conv(y, rng.normal(0, 0.3, (8, 8, 1, 1)), rng.normal(0, 0.1, 8)))
    x = g.flatten(g.global_average_pool(x))
    return g.build(g.gemm(x, rng.normal(0, 0.3, (10, 8)), rng.normal(0, 0.1, 10)), classes=10)


def quantized(model: onnx.ModelProto, shape=(3, 8, 8)):
    graph = import_onnx(model)
    images = np.random.default_rng(1).normal(0, 1, (8, *shape)).astype(np.float32)
    return quantize_graph(graph, calibrate(model, graph, images, progress=False))


class Counting:
    """An executor that counts the programs it runs."""

    def __init__(self, executor):
        self.executor, self.runs = executor, 0
        self.name, self.memory_bytes_per_cycle = executor.name, executor.memory_bytes_per_cycle

    def run(self, program):
        self.runs += 1
        return self.executor.run(program)


@pytest.mark.parametrize("batch", [1, 3])
def test_a_network_runs_as_one_program_bit_for_bit(batch):
    """Convolutions (window LOADs, a depthwise one), a max pool, a residual add in the STOREs, a global pool and the
    classifier linked into one program: one run per batch after the first, the layer-by-layer logits exactly."""
    model = quantized(small_network())
    x = np.random.default_rng(2).integers(0, 256, (batch, 3, 8, 8), dtype=np.uint8)
    executor = Counting(ReferenceExecutor(TINY))
    runner = ModelRunner(model, TINY, "reference", executor, network=True)
    first = runner.run_batch(x)
    network = runner.networks[batch]
    assert isinstance(network, NetworkProgram), network
    columns = decode_columns(network.program.memory.data[network.program.address:][
        :network.program.length * 32].reshape(-1, 32))
    assert (columns["opcode"] == Opcode.SYNC).sum() == network.layers - 1 == len(network.links) - 1
    runs = executor.runs
    again = runner.run_batch(x)
    assert executor.runs == runs + 1  # the whole network, once
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(again, ModelRunner(model, TINY, "numpy").run_batch(x))
    other = np.random.default_rng(3).integers(0, 256, x.shape, dtype=np.uint8)  # new input, same program
    np.testing.assert_array_equal(runner.run_batch(other), ModelRunner(model, TINY, "numpy").run_batch(other))
    assert {s.placement for s in runner.stats} == {"accelerator", VIEW, FUSED_ADD}


def test_the_network_program_is_bit_exact_on_the_rtl(verilator_executors):
    """The RTL runs the linked program to the reference's logits."""
    model = quantized(small_network())
    x = np.random.default_rng(4).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    runner = ModelRunner(model, TINY, "verilator", verilator_executors(TINY), network=True)
    runner.run_batch(x)
    assert isinstance(runner.networks[2], NetworkProgram)
    np.testing.assert_array_equal(runner.run_batch(x), ModelRunner(model, TINY, "reference").run_batch(x))
    assert sum(s.cycles for s in runner.stats) > 0


def test_the_rtl_computes_every_tensor_it_returns(verilator_executors):
    """Linking runs no layer: when the RTL starts the network, every layer's output in its memory is still zero, so
    the results it returns are its own, not an earlier executor's left in the image."""
    model = quantized(small_network())
    x = np.random.default_rng(7).integers(1, 256, (1, 3, 8, 8), dtype=np.uint8)
    verilator, before = verilator_executors(TINY), []

    class Watching(Counting):
        def run(self, program):
            network = runner.networks[1]
            before.append([np.array(network.result(index)) for index in range(len(network.links))])
            return super().run(program)

    executor = Watching(verilator)
    runner = ModelRunner(model, TINY, "verilator", executor, network=True)
    logits = runner.run_batch(x)
    assert executor.runs == 1 and len(before) == 1
    assert all(not result.any() for result in before[0])
    after = [runner.networks[1].result(index) for index in range(len(runner.networks[1].links))]
    assert all(result.any() for result in after)
    np.testing.assert_array_equal(logits, ModelRunner(model, TINY, "numpy").run_batch(x))


def padded_network():
    """Two convolutions with a reflect pad, which the host computes, between them."""
    rng = np.random.default_rng(0)
    g = GraphBuilder("padded", (1, 3, 8, 8))
    x = g.relu(g.conv("input", rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8), padding=1))
    x = g.node("Pad", [x, g.constant(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], mode="reflect")
    x = g.relu(g.conv(x, rng.normal(0, 0.3, (8, 8, 3, 3)), rng.normal(0, 0.1, 8)))
    return quantized(g.build(g.gemm(g.flatten(g.global_average_pool(x)), rng.normal(0, 0.3, (4, 8)),
                                    rng.normal(0, 0.1, 4)), classes=4), (3, 8, 8))


def test_a_host_layer_between_programs_keeps_one_program_per_layer():
    """A layer the host computes between two programs (a reflect pad) stops the link, named; the batch still runs
    layer by layer, exactly."""
    model = padded_network()
    pad = next(layer for layer in model.layers if layer.kind == "pad")
    x = np.random.default_rng(5).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    runner = ModelRunner(model, TINY, "reference", network=True)
    runner.run_batch(x)
    assert pad.name in runner.networks[1] and "on the host" in runner.networks[1]
    np.testing.assert_array_equal(runner.run_batch(x), ModelRunner(model, TINY, "numpy").run_batch(x))


def test_layouts_that_differ_are_named():
    """Where rows and columns differ, a product's output rows and its reader's input rows may not agree: the
    link says which layers and sizes."""
    model = quantized(small_network())
    runner = ModelRunner(model, NARROW, "reference", network=True)
    x = np.random.default_rng(6).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    runner.run_batch(x)
    reason = runner.networks[1]
    assert isinstance(reason, str) and "layout" in reason, reason
    np.testing.assert_array_equal(runner.run_batch(x), ModelRunner(model, NARROW, "numpy").run_batch(x))


def test_the_placement_table_follows_the_configuration():
    """Compiled for hardware without the accumulators' maximum or the float32 post-processor, the max pool and the
    global pool are placed on the host in the layers and the report, and the network does not link, naming one."""
    from mvu.host.compiler.compile import place_for

    model = quantized(small_network())
    bare = dataclasses.replace(TINY, max_pool=False, float32_requant=False)
    place_for(model, bare)
    hosted = {row["layer"] for row in model.report if row["placement"] == "host"}
    assert {layer.name for layer in model.layers if layer.kind in ("maxpool", "gap")} <= hosted
    runner = ModelRunner(model, bare, "reference", network=True)
    x = np.random.default_rng(7).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(runner.run_batch(x), ModelRunner(model, bare, "numpy").run_batch(x))
    assert "on the host" in runner.networks[1]


def dense_network(nested: bool, size: int = 8, growth: int = 4) -> onnx.ModelProto:
    """DenseNet in small: dense layers (BatchNorm+ReLU on a Concat, 1x1 Conv+ReLU, 3x3 Conv) whose outputs join the
    block's running Concat, nested (``Concat(x, new)``) or flat (``Concat(x0, new1, ..., newk)``, torchvision's
    export); a transition (BatchNorm+ReLU, 1x1 Conv, 2x2 average pool); BatchNorm+ReLU, GAP and FC. Some BatchNorm
    scales are negative."""
    rng = np.random.default_rng(0)
    g = GraphBuilder("dense", (1, 3, size, size))

    def norm(x: str, channels: int) -> str:
        scale = rng.uniform(0.5, 1.5, channels) * rng.choice([-1, 1], channels)
        return g.relu(g.batch_norm(x, scale, rng.normal(0, 0.2, channels), rng.normal(0, 0.2, channels),
                                   rng.uniform(0.5, 2.0, channels)))

    def block(x: str, channels: int, layers: int) -> tuple[str, int]:
        features = [x]
        for _ in range(layers):
            y = g.relu(g.conv(norm(x, channels), rng.normal(0, 0.3, (8, channels, 1, 1)), rng.normal(0, 0.1, 8)))
            features.append(g.conv(y, rng.normal(0, 0.3, (growth, 8, 3, 3)), rng.normal(0, 0.1, growth), padding=1))
            x = g.concat([x, features[-1]] if nested else features)
            channels += growth
        return x, channels

    x = g.max_pool(g.relu(g.conv("input", rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8), padding=1)), 3, 2, 1)
    x, channels = block(x, 8, 2)
    x = g.average_pool(g.conv(norm(x, channels), rng.normal(0, 0.3, (8, channels, 1, 1)), rng.normal(0, 0.1, 8)), 2, 2)
    x, channels = block(x, 8, 2)
    x = g.flatten(g.global_average_pool(norm(x, channels)))
    return g.build(g.gemm(x, rng.normal(0, 0.3, (10, channels)), rng.normal(0, 0.1, 10)), classes=10)


@pytest.mark.parametrize("nested", [True, False], ids=["nested", "flat"])
def test_concatenations_are_laid_out_by_addressing(nested):
    """A DenseNet's Concats are views: each part's producer stores into its channel slice of the block's buffer and
    every BatchNorm (a depthwise 1x1 program) reads its slice there. One program, no host layer, the layer-by-layer
    logits and every tensor exactly, batch after batch."""
    model = quantized(dense_network(nested))
    assert {layer.placement for layer in model.layers if layer.kind == "concat"} == {VIEW}
    assert "affine" not in {layer.kind for layer in model.layers}
    concats = [layer for layer in model.layers if layer.kind == "concat"]
    assert len({model.tensor_q[name] for layer in concats for name in [*layer.inputs, layer.output]}) == 2  # a block
    x = np.random.default_rng(8).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    runner = ModelRunner(model, TINY, "reference", ReferenceExecutor(TINY), network=True)
    first = runner.run_batch(x)
    assert isinstance(runner.networks[2], NetworkProgram), runner.networks[2]
    assert runner.networks[2].placed  # producers that store into a buffer
    layer_by_layer = ModelRunner(model, TINY, "reference")
    np.testing.assert_array_equal(first, layer_by_layer.run_batch(x))
    other = np.random.default_rng(9).integers(0, 256, x.shape, dtype=np.uint8)
    np.testing.assert_array_equal(runner.run_batch(other), layer_by_layer.run_batch(other))
    for name, tensor in layer_by_layer.tensors.items():  # each result is read where the network wrote it
        np.testing.assert_array_equal(runner.tensors[name], tensor, err_msg=name)
    assert {s.placement for s in runner.stats} == {"accelerator", VIEW}
    np.testing.assert_array_equal(first, ModelRunner(model, TINY, "numpy").run_batch(x))


def test_layers_that_share_the_input_read_this_batchs_results():
    """Two layers read the network's input and store into one Concat's buffer: the network runs once the last of
    them has its input, and every tensor read back, the first one's too, is this batch's, not the last one's."""
    rng = np.random.default_rng(3)
    g = GraphBuilder("branches", (1, 3, 8, 8))
    a = g.relu(g.conv("input", rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8), padding=1))
    b = g.relu(g.conv("input", rng.normal(0, 0.3, (8, 3, 1, 1)), rng.normal(0, 0.1, 8)))
    x = g.relu(g.conv(g.concat([a, b]), rng.normal(0, 0.3, (8, 16, 1, 1)), rng.normal(0, 0.1, 8)))
    x = g.max_pool(x, 3, 2, 1)  # TINY pools 4x4 globally
    model = quantized(g.build(g.gemm(g.flatten(g.global_average_pool(x)), rng.normal(0, 0.3, (10, 8)),
                                     rng.normal(0, 0.1, 10)), classes=10))
    runner = ModelRunner(model, TINY, "reference", ReferenceExecutor(TINY), network=True)
    layer_by_layer = ModelRunner(model, TINY, "reference")
    for seed in (20, 21, 22):
        x = np.random.default_rng(seed).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
        np.testing.assert_array_equal(runner.run_batch(x), layer_by_layer.run_batch(x))
        assert isinstance(runner.networks[1], NetworkProgram) and runner.networks[1].placed, runner.networks[1]
        for name, tensor in layer_by_layer.tensors.items():
            np.testing.assert_array_equal(runner.tensors[name], tensor, err_msg=f"{name}, batch {seed}")


def test_concatenations_by_addressing_are_bit_exact_on_the_rtl(verilator_executors):
    """The RTL runs a DenseNet's one program, its producers' STOREs and readers' LOADs moved to the buffers' pitch,
    to the reference's logits."""
    model = quantized(dense_network(nested=True))
    x = np.random.default_rng(10).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    runner = ModelRunner(model, TINY, "verilator", verilator_executors(TINY), network=True)
    runner.run_batch(x)
    assert isinstance(runner.networks[1], NetworkProgram), runner.networks[1]
    np.testing.assert_array_equal(runner.run_batch(x), ModelRunner(model, TINY, "reference").run_batch(x))


def test_parts_that_do_not_fill_whole_column_tiles_are_named():
    """A dense layer of 3 channels on a 4-column array writes rows of 4 bytes, one of them padding, which its
    concatenation cannot take: the link says so, and the batch runs layer by layer, exactly."""
    model = quantized(dense_network(nested=True, growth=3))
    x = np.random.default_rng(14).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    runner = ModelRunner(model, TINY, "reference", network=True)
    runner.run_batch(x)
    assert "cannot take as 3 channels" in runner.networks[1], runner.networks[1]
    np.testing.assert_array_equal(runner.run_batch(x), ModelRunner(model, TINY, "numpy").run_batch(x))


def test_a_tensor_concatenated_in_two_places_is_named():
    """A tensor that two Concats put at different channels cannot lie in one buffer: the link names it, and the batch
    runs layer by layer, exactly."""
    rng = np.random.default_rng(0)
    g = GraphBuilder("twice", (1, 3, 4, 4))
    x = g.relu(g.conv("input", rng.normal(0, 0.3, (4, 3, 3, 3)), rng.normal(0, 0.1, 4), padding=1))
    y = g.conv(x, rng.normal(0, 0.3, (4, 4, 1, 1)), rng.normal(0, 0.1, 4))
    a = g.conv(g.concat([x, y]), rng.normal(0, 0.3, (4, 8, 1, 1)), rng.normal(0, 0.1, 4))
    b = g.conv(g.concat([y, x]), rng.normal(0, 0.3, (4, 8, 1, 1)), rng.normal(0, 0.1, 4))
    model = quantized(g.build(g.gemm(g.flatten(g.global_average_pool(g.add(a, b))), rng.normal(0, 0.3, (4, 4)),
                                     rng.normal(0, 0.1, 4)), classes=4), (3, 4, 4))
    x = np.random.default_rng(11).integers(0, 256, (1, 3, 4, 4), dtype=np.uint8)
    runner = ModelRunner(model, TINY, "reference", network=True)
    runner.run_batch(x)
    assert "two places" in runner.networks[1], runner.networks[1]
    np.testing.assert_array_equal(runner.run_batch(x), ModelRunner(model, TINY, "numpy").run_batch(x))


class Holding(Counting):
    """An executor whose device holds ``memory_bytes`` of memory."""

    def __init__(self, executor, memory_bytes: int):
        super().__init__(executor)
        self.memory_bytes = memory_bytes


def test_a_network_beyond_the_devices_memory_is_named_and_runs_layer_by_layer():
    """A device whose memory holds every layer's program but not the network's image: the link names the layer the
    image outgrows the memory at, and the batch runs layer by layer, exactly."""
    model = quantized(small_network())
    x = np.random.default_rng(12).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    whole = ModelRunner(model, TINY, "reference", ReferenceExecutor(TINY), network=True)
    whole.run_batch(x)
    network = whole.networks[1]
    largest = max(entry.program.program.memory.size for entry in network.links)
    assert largest < network.program.memory.size
    runner = ModelRunner(model, TINY, "reference", Holding(ReferenceExecutor(TINY), largest), network=True)
    runner.run_batch(x)
    reason = runner.networks[1]
    assert isinstance(reason, str) and f"the device holds {largest:,}" in reason, reason
    assert any(reason.endswith(f"at {entry.layer}") for entry in network.links), reason
    np.testing.assert_array_equal(runner.run_batch(x), ModelRunner(model, TINY, "numpy").run_batch(x))


def test_a_network_image_is_as_large_as_what_it_holds():
    """The linked image carries no spare capacity: a device holding exactly its bytes runs it as one program, one
    byte less runs layer by layer."""
    model = quantized(small_network())
    x = np.random.default_rng(14).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    whole = ModelRunner(model, TINY, "reference", ReferenceExecutor(TINY), network=True)
    whole.run_batch(x)
    image = whole.networks[1].program.memory
    assert image.size == image.used
    for held, linked in ((image.size, True), (image.size - 1, False)):
        runner = ModelRunner(model, TINY, "reference", Holding(ReferenceExecutor(TINY), held), network=True)
        runner.run_batch(x)
        assert isinstance(runner.networks[1], str) != linked, runner.networks[1]


def test_a_layer_beyond_the_devices_memory_is_a_clear_error():
    """A layer whose own program does not fit the device's memory: an error naming the layer and both sizes."""
    from mvu.host.runtime.runner import DeviceMemoryError

    model = quantized(small_network())
    x = np.random.default_rng(13).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    runner = ModelRunner(model, TINY, "reference", Holding(ReferenceExecutor(TINY), 1024))
    with pytest.raises(DeviceMemoryError, match=r"layer \S+'s program needs [\d,]+ bytes of memory; the device "
                                                r"holds 1,024"):
        runner.run_batch(x)


def test_mvu_run_says_why_a_network_is_one_program_per_layer(tmp_path, capsys):
    """``mvu run`` links the network by default; where it cannot, it says which layer keeps it apart."""
    import json

    from mvu.host.compiler.recipes import demo_photos
    from mvu.host.model.package import ModelPackage, save_package
    from mvu.host.runtime.preprocess import TORCHVISION
    from mvu.host.tools.cli import main

    model = padded_network()
    pad = next(layer for layer in model.layers if layer.kind == "pad")
    preprocessing = {**TORCHVISION.to_dict(), "resize": 8, "crop": 8}
    path = save_package(ModelPackage("padded", model, TINY, preprocessing=preprocessing,
                                     labels=[f"class {i}" for i in range(4)], source_sha256="0" * 64), tmp_path / "padded.mvu")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY.to_dict()))
    assert main(["--config", str(config), "run", str(path), str(demo_photos()[0]), "--backend", "reference"]) == 0
    err = capsys.readouterr().err
    assert "one program per layer" in err and pad.name in err, err
