"""Batches: N images through the model at once give exactly the logits of N separate runs, for fewer cycles."""

import numpy as np
import pytest
from conftest import TINY
from test_prequantized import qlinear_network

from mvu.hdl.contract.requantization import Requantization
from mvu.host.compiler.compile import compile_model
from mvu.host.compiler.recipes import demo_photos
from mvu.host.gemm import golden_gemm
from mvu.host.model.quantized import Layer, QuantParams
from mvu.host.runtime.classify import Classifier
from mvu.host.runtime.preprocess import PreprocessRecipe, preprocess_batch
from mvu.host.runtime.runner import LayerStats, ModelRunner, im2col, sub_batch_sizes
from mvu.host.runtime.scores import softmax, top_k
from mvu.models.onnx_builder import GraphBuilder

N = 3


def conv_network(seed=0):
    """Conv+BN+ReLU, MaxPool, Conv+ReLU6, depthwise Conv, residual Add, grouped Conv, AveragePool, Concat,
    strided 5x5 depthwise Conv, 1x1 Conv, GAP and a two-layer classifier head (FC with a fused ReLU, then logits)."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder("batch", (1, 3, 16, 16))
    x = g.conv("input", rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8), padding=1)
    x = g.batch_norm(x, rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.1, 8), rng.normal(0, 0.1, 8), rng.uniform(0.5, 1.5, 8))
    x = g.max_pool(g.relu(x), 3, 2, 1)
    y = g.relu6(g.conv(x, rng.normal(0, 0.2, (8, 8, 3, 3)), rng.normal(0, 0.1, 8), padding=1))
    x = g.add(x, g.conv(y, rng.normal(0, 0.3, (8, 1, 3, 3)), rng.normal(0, 0.1, 8), padding=1, group=8))
    grouped = g.relu(g.conv(x, rng.normal(0, 0.3, (8, 4, 3, 3)), rng.normal(0, 0.1, 8), padding=1, group=2))
    x = g.concat([grouped, g.average_pool(x, 3, 1, 1)])
    x = g.relu(g.conv(x, rng.normal(0, 0.2, (16, 1, 5, 5)), rng.normal(0, 0.1, 16), stride=2, padding=2, group=16))
    x = g.relu(g.conv(x, rng.normal(0, 0.3, (16, 16, 1, 1)), rng.normal(0, 0.1, 16)))
    x = g.relu(g.gemm(g.flatten(g.global_average_pool(x)), rng.normal(0, 0.3, (48, 16)), rng.normal(0, 0.1, 48)))
    return g.build(g.gemm(x, rng.normal(0, 0.2, (10, 48)), rng.normal(0, 0.1, 10)), classes=10)


def compile_small(model, size: int):
    preprocessing = {"resize": size, "crop": size, "mean": [127.0] * 3, "std": [64.0] * 3}
    return compile_model(model, config=TINY, preprocessing=preprocessing, labels=[f"class {i}" for i in range(10)],
                         name="small", progress=False)


@pytest.fixture(scope="module", params=["conv", "qlinear"])
def package(request):
    if request.param == "conv":
        return compile_small(conv_network(seed=4), 16)
    return compile_small(qlinear_network(seed=2), 8)  # pre-quantized: onnxruntime's float32 requantization


def batch_of_photos(package) -> np.ndarray:
    recipe = PreprocessRecipe.from_dict(package.preprocessing)
    return package.model.input_q.quantize(preprocess_batch(demo_photos()[:N], recipe))


def assert_batch_matches_single_runs(runner: ModelRunner, images_q: np.ndarray) -> np.ndarray:
    singles = [runner.run(image[None]) for image in images_q]
    single_stats = runner.stats
    batched = runner.run_batch(images_q)
    assert batched.shape == (len(images_q), 10)
    assert not np.array_equal(batched[0], batched[1])  # different images: the comparison means something
    for single, row in zip(singles, batched):
        assert single.shape == (1, 10)
        assert np.array_equal(single[0], row)
    assert [s.name for s in runner.stats] == [s.name for s in single_stats]
    assert all(s.images == len(images_q) for s in runner.stats)
    assert runner.tensors[runner.model.output].shape[0] == len(images_q)
    return batched


@pytest.mark.parametrize("backend", ["numpy", "reference"])
def test_batch_gives_the_logits_of_separate_runs(package, backend):
    runner = ModelRunner(package.model, TINY, backend)
    batched = assert_batch_matches_single_runs(runner, batch_of_photos(package))
    if backend == "reference":
        numpy = ModelRunner(package.model, TINY, "numpy").run_batch(batch_of_photos(package))
        assert np.array_equal(batched, numpy)


def test_batch_on_the_rtl_matches_and_costs_fewer_cycles_per_image(package, verilator_executors):
    runner = ModelRunner(package.model, TINY, "verilator", verilator_executors(TINY))
    images_q = batch_of_photos(package)
    single_cycles = {}
    for image in images_q:
        runner.run(image[None])
        for s in runner.stats:
            single_cycles[s.name] = single_cycles.get(s.name, 0) + s.cycles
    assert_batch_matches_single_runs(runner, images_q)
    batched = {s.name: s for s in runner.stats}
    fc = [name for name, s in batched.items() if s.kind in ("fc", "fc_quantized")]
    assert fc and all(batched[name].cycles > 0 for name in fc)
    for name in fc:  # the weights are loaded once for all the images
        assert 2 * batched[name].cycles < single_cycles[name], (name, batched[name].cycles, single_cycles[name])
    assert sum(s.cycles for s in batched.values()) < sum(single_cycles.values())


def test_classify_batch_agrees_with_classify(package):
    classifier = Classifier(package, "reference")
    photos = demo_photos()[:N]
    singles = [classifier.classify(photo, top=3) for photo in photos]
    batch = classifier.classify_batch(photos, top=3, names=[None, "second", None])
    assert [p.top for p in batch] == [p.top for p in singles]
    assert [p.source for p in batch] == [str(photos[0]), "second", str(photos[2])]
    assert all(p.batch_size == N for p in batch) and singles[0].batch_size == 1
    assert set(batch[0].seconds) == set(singles[0].seconds) == {"preprocess", "accelerator", "host", "total"}
    assert batch[0].to_dict()["batch_size"] == N
    assert classifier.classify_batch([]) == []

    images = preprocess_batch(photos, classifier.recipe)
    logits, stats = classifier.logits(images)
    assert logits.shape == (N, 10) and stats.images == N and len(stats.layers) == len(package.model.layers)
    assert [int(np.argmax(row)) for row in logits] == [p.top[0]["class"] for p in singles]


def test_run_batch_refuses_wrong_shapes(package):
    runner = ModelRunner(package.model, TINY, "numpy")
    images_q = batch_of_photos(package)
    for bad in (images_q[0], images_q[:0], images_q[:, :2], images_q.astype(np.float32)):
        with pytest.raises(ValueError, match="expected uint8 images"):
            runner.run_batch(bad)


@pytest.mark.parametrize("placement, backend", [("host", "numpy"), ("accelerator", "reference")])
@pytest.mark.parametrize("rounding", ["fixed", "float32"])
def test_depthwise_matches_one_gemm_per_channel(rounding, placement, backend):
    """On the host, and on the accelerator as a depthwise program."""
    rng = np.random.default_rng(7)
    n, c = 2, 5
    x = rng.integers(0, 256, (n, c, 11, 9), dtype=np.uint8)
    attrs = {"kernel": [3, 5], "strides": [2, 1], "pads": [1, 2, 0, 1], "dilations": [2, 1], "group": c,
             "in_zero_point": 37, "clamp": (0, 255), "rounding": rounding}
    arrays = {"weight": rng.integers(-127, 128, (c, 1, 3, 5), dtype=np.int8), "bias": rng.integers(-999, 999, c),
              "multiplier": rng.integers(1 << 29, 1 << 30, c), "shift": rng.integers(36, 40, c),
              "scale": rng.uniform(2e-3, 2e-2, c).astype(np.float32)}
    layer = Layer("conv", "dw", ["x"], "y", placement, attrs, arrays, QuantParams(0.1, 9))
    stats = LayerStats("dw", "conv", placement, 0)
    got = ModelRunner(None, TINY, backend)._depthwise(layer, x, stats)
    assert stats.placement == placement
    for channel in range(c):
        patches, ho, wo = im2col(x[:, channel:channel + 1], attrs["kernel"], attrs["strides"], attrs["pads"],
                                 attrs["dilations"], attrs["in_zero_point"])
        limits = dict(out_zero_point=9, clamp_min=0, clamp_max=255)
        requant = Requantization(*(arrays[k][channel:channel + 1] for k in ("bias", "multiplier", "shift")),
                                 **limits) if rounding == "fixed" else \
            Requantization.from_float32_scales(arrays["scale"][channel:channel + 1], arrays["bias"][channel:channel + 1],
                                               **limits)
        expected = golden_gemm(patches, arrays["weight"][channel].reshape(-1, 1), attrs["in_zero_point"], requant)
        assert np.array_equal(got[:, channel], expected.reshape(n, ho, wo))
    assert len(np.unique(got)) > 20  # not saturated


def test_programs_are_kept_per_batch_size_within_the_cache(package):
    images_q = batch_of_photos(package)
    runner = ModelRunner(package.model, TINY, "reference")
    one = runner.run_batch(images_q[:1])
    first = [id(program) for program in runner._used]
    three = runner.run_batch(images_q)
    assert np.array_equal(runner.run_batch(images_q[:1]), one)
    assert [id(program) for program in runner._used] == first  # batch size 1 again: its programs, not new ones
    assert len(runner._programs) == 2 * len(first)
    small = ModelRunner(package.model, TINY, "reference", program_cache_bytes=1)
    small.run_batch(images_q[:1])
    assert np.array_equal(small.run_batch(images_q), three)
    assert {id(p) for p in small._programs.values()} == {id(p) for p in small._used}  # size 1 made room


def test_sub_batches_are_powers_of_two_largest_first():
    assert [sub_batch_sizes(n) for n in (1, 6, 7, 8)] == [[1], [4, 2], [4, 2, 1], [8]]


def test_a_batch_in_sub_batches_gives_its_logits_and_sums_their_stats(package):
    images_q = batch_of_photos(package)
    runner = ModelRunner(package.model, TINY, "reference")
    whole = runner.run_batch(images_q)
    parts = runner.run_sub_batches(images_q)  # 2 + 1
    assert np.array_equal(parts, whole) and runner.last_output is parts
    assert len(runner._programs) == 3 * len(runner._used)  # sizes 3, 2 and 1
    assert [s.name for s in runner.stats] == [layer.name for layer in package.model.layers]
    assert all(s.images == N and s.macs == layer.macs * N for s, layer in zip(runner.stats, package.model.layers))
    assert all(s.seconds > 0 for s in runner.stats)
    with pytest.raises(ValueError, match="expected uint8 images"):
        runner.run_sub_batches(images_q[:0])


def test_layer_stats_add_up():
    parts = [LayerStats("fc", "fc", "accelerator", 10, 1, 7, 0.5, 0.25, {"cycles": 7, "stalls": 0}),
             LayerStats("fc", "fc", "accelerator", 20, 2, 9, 1.0, 0.0, {"cycles": 9, "loads": 3})]
    assert LayerStats.total(parts) == LayerStats("fc", "fc", "accelerator", 30, 3, 16, 1.5, 0.25,
                                                 {"cycles": 16, "stalls": 0, "loads": 3})


def test_prepare_builds_every_sub_batch_size_except_on_a_slow_backend(package):
    from mvu.host.executors.reference import ReferenceExecutor

    runner = ModelRunner(package.model, TINY, "reference")
    runner.prepare(5)
    assert len(runner._programs) == 3 * len(runner._used)  # sizes 1, 2 and 4
    slow = ModelRunner(package.model, TINY, "verilator", ReferenceExecutor(TINY))  # stands in for the RTL
    slow.prepare(5)
    assert not slow._programs


def test_softmax_and_top_k():
    logits = np.array([[1.0, 3.0, 3.0, -2.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    probabilities = softmax(logits)
    assert probabilities.dtype == np.float64 and np.allclose(probabilities.sum(axis=1), 1)
    assert np.allclose(probabilities[1], 0.25)
    best = top_k(probabilities[0], ["a", "b", "c"], 3)
    assert [(e["class"], e["label"]) for e in best] == [(1, "b"), (2, "c"), (0, "a")]  # a tie: the lower index first
    assert best[0]["score"] == pytest.approx(np.exp(3) / (np.exp(1) + 2 * np.exp(3) + np.exp(-2)))
    assert top_k(probabilities[0], ["a"], 4)[-1]["label"] == "3"  # no label: the class number
