"""Benchmarks that print numbers (and JSON): a random quantized GEMM on an executor."""

from __future__ import annotations

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.requantization import Requantization
from mvu.host.executors import BACKENDS, make_executor
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.gemm import GemmProgram

__all__ = ["random_gemm_operands", "bench_gemm"]


def random_gemm_operands(m: int, k: int, n: int, seed: int):
    """Random uint8 activations, int8 weights and requantization that keeps outputs in range."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, (k, n), dtype=np.int8)
    zero_point = int(rng.integers(0, 256))
    # The accumulators spread about sqrt(k) * 128 * 74: scale them onto roughly +-64.
    scales = rng.uniform(0.5, 2.0, n) * 64 / (np.sqrt(k) * 128 * 74)
    bias = rng.integers(-(1 << 16), 1 << 16, n)
    requant = Requantization.from_scales(scales, bias, out_zero_point=int(rng.integers(-20, 20)))
    return a, w, zero_point, requant


def bench_gemm(config: HardwareConfig, m: int, k: int, n: int, *, backend: str = "verilator", seed: int = 0,
               latency: int = 40, bytes_per_cycle: float | None = None, executor=None) -> dict:
    """Run one random GEMM on ``backend`` and on the reference; report exactness and speed."""
    a, w, zero_point, requant = random_gemm_operands(m, k, n, seed)
    executor = executor or make_executor(backend, config, latency=latency, bytes_per_cycle=bytes_per_cycle)
    bandwidth = getattr(getattr(executor, "memory_model", None), "bytes_per_cycle", None)
    under_test = GemmProgram(config, a, w, act_zero_point=zero_point, requant=requant,
                             memory_bytes_per_cycle=bandwidth)
    run = executor.run(under_test.program)
    reference = GemmProgram(config, a, w, act_zero_point=zero_point, requant=requant, tiling=under_test.tiling)
    ReferenceExecutor(config).run(reference.program)
    macs = m * k * n
    report = {
        "m": m, "k": k, "n": n, "seed": seed, "backend": executor.name,
        "bit_exact": bool(np.array_equal(under_test.result(), reference.result())),
        "macs": macs,
        "instructions": under_test.program.length,
        "tiling": vars(under_test.tiling),
        "sim_seconds": run.wall_seconds,
        "config": config.to_dict(),
    }
    cycles = run.counters.get("cycles")
    if cycles:
        memory = executor.memory_model
        beats = run.counters["mem_read_beats"] + run.counters["mem_write_beats"]
        report.update({
            "cycles": cycles,
            "mac_utilization": macs / (cycles * config.macs_per_cycle),
            "array_active_fraction": run.counters["array_active"] / cycles,
            "sim_cycles_per_second": cycles / run.wall_seconds,
            "sim_macs_per_second": macs / run.wall_seconds,
            "modelled_latency_ms": config.modelled_ms(cycles),
            "memory_model": {"latency_cycles": memory.latency, "bytes_per_cycle": memory.bytes_per_cycle},
            "memory_bandwidth_used": beats * config.mem_bytes / (cycles * memory.bytes_per_cycle),
            "counters": run.counters,
        })
    else:
        report["macs_per_second"] = macs / run.wall_seconds
    return report


def bench_network(recipe: str, config: HardwareConfig, *, image=None, backends=("reference", "verilator"),
                  executors: dict | None = None, compare_onnxruntime: bool = False, memory: str = "simulator",
                  network: bool = True) -> dict:
    """One image through a compiled recipe on each backend: bit-exactness, cycles, utilization, wall times
    (the first image, which builds the programs, and for the fast backends a second one). With ``network`` the
    layers' programs run linked as one program where they link (each backend's ``program`` says so, or why not);
    else one program per layer.

    ``memory`` is the memory the verilator backend simulates and sets the clock its cycles are timed at
    (:func:`~mvu.host.tools.board_performance.simulated_memory`: ``simulator``, ``auto`` or a board's memory);
    a verilator executor given in ``executors`` keeps its own memory model.
    """
    import time
    from collections import Counter

    from mvu.host.compiler.recipes import cached_package, demo_photos
    from mvu.host.runtime.classify import Classifier
    from mvu.host.tools.board_performance import simulated_memory
    from mvu.sim.verilator_executor import VerilatorExecutor

    simulated = simulated_memory(memory, config)
    executors = dict(executors or {})
    if simulated.model and "verilator" in backends and "verilator" not in executors:
        executors["verilator"] = VerilatorExecutor(config, simulated.model)
    package = cached_package(recipe, config)
    image = image or demo_photos()[0]
    conv_macs = sum(layer.macs for layer in package.model.layers if layer.placement == "accelerator")
    report = {"model": recipe, "image": str(image), "config": config.to_dict(), "accelerator_macs": conv_macs,
              "memory": simulated.to_dict(), "backends": {}}
    logits = {}
    for backend in backends:
        executor = executors.get(backend)
        classifier = Classifier(package, backend, config, executor=executor, network=network)
        started = time.perf_counter()
        prediction = classifier.classify(image)
        wall = time.perf_counter() - started
        logits[backend] = classifier.runner.last_output
        # Where the layers ran: an Add done by the STOREs is no host layer; a depthwise layer too deep for the array is.
        hosted = Counter(layer.kind for layer in prediction.layers if layer.placement == "host")
        linked = classifier.runner.networks.get(1, "one program per layer")
        entry = {"wall_seconds": wall, "top1": prediction.top[0],
                 "accelerator_seconds": prediction.seconds["accelerator"], "host_layers": dict(sorted(hosted.items())),
                 "program": linked if isinstance(linked, str) else f"one program: {linked.layers} layers linked, "
                                                                    f"{linked.program.memory.size / 2 ** 20:.1f} MiB"}
        if not BACKENDS[backend].slow:  # the next image reuses the layers' programs: the steady per-image latency
            for _ in range(2 if network else 1):  # a network program's first run checks and plans it
                started = time.perf_counter()
                classifier.classify(image)
                entry["warm_seconds"] = time.perf_counter() - started
        if prediction.cycles:
            entry.update(cycles=prediction.cycles, modelled_ms=prediction.cycles / (simulated.clock.mhz * 1e3),
                         mac_utilization=conv_macs / (prediction.cycles * config.macs_per_cycle),
                         sim_macs_per_second=conv_macs / max(prediction.seconds["accelerator"], 1e-9))
        report["backends"][backend] = entry
    first = next(iter(logits.values()))
    report["bit_exact"] = all(np.array_equal(first, other) for other in logits.values())
    if compare_onnxruntime:
        report["onnxruntime_int8"] = onnxruntime_int8_comparison(
            recipe, package, image, backends=[b for b in backends if not BACKENDS[b].slow] or ["reference"])
    return report


def bench_network_cluster(recipe: str, config: HardwareConfig, address: str, *, images: list,
                          backends=("reference", "verilator"), progress: bool = True) -> dict:
    """``images`` through a compiled recipe on each backend, spread over the Dask cluster at ``address``:
    throughput of the whole cluster, cycles and MAC utilization per image, and whether every backend gave
    every image the same logits (compared by digest)."""
    import tempfile
    import time
    from pathlib import Path

    from mvu.host.compiler.recipes import cached_package
    from mvu.host.model.package import save_package
    from mvu.host.tools.cluster import classify_on_cluster, cluster_threads

    package = cached_package(recipe, config)
    accelerator_macs = sum(layer.macs for layer in package.model.layers if layer.placement == "accelerator")
    report = {"model": recipe, "cluster": address, "worker_threads": cluster_threads(address),
              "images": len(images), "config": config.to_dict(), "accelerator_macs": accelerator_macs,
              "backends": {}}
    digests = {}
    with tempfile.TemporaryDirectory() as folder:
        path = save_package(package, Path(folder) / f"{recipe}.mvu")
        for backend in backends:
            started = time.perf_counter()
            predictions = classify_on_cluster(address, path, images, backend=backend, config=config.to_dict(),
                                              top=1, progress=progress, digest=True)
            wall = time.perf_counter() - started
            digests[backend] = [prediction["logits_sha256"] for prediction in predictions]
            entry = {"wall_seconds": wall, "images_per_second": len(images) / wall,
                     "top1": [prediction["top"][0]["label"] for prediction in predictions]}
            cycles = [prediction["cycles"] for prediction in predictions]
            if all(cycles):
                mean = sum(cycles) / len(cycles)
                entry.update(cycles_per_image=mean, modelled_ms=config.modelled_ms(mean),
                             mac_utilization=accelerator_macs / (mean * config.macs_per_cycle),
                             cluster_macs_per_second=accelerator_macs * len(images) / wall)  # wall: transfers too
            report["backends"][backend] = entry
    first = next(iter(digests.values()))
    report["bit_exact"] = all(other == first for other in digests.values())
    return report


def onnxruntime_int8_comparison(recipe: str, package, image, *, backends=("reference", "numpy"),
                                repeats: int = 20) -> dict:
    """The same int8 model on onnxruntime and on mvu, timed at batch 1 in one run.

    onnxruntime quantizes the recipe (static, QOperator, per-channel int8 weights, uint8
    activations, calibrated on the built-in photos); mvu imports that very model with its own
    scales and runs it on ``backends``. The logits must agree bit for bit.
    """
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mvu.host.compiler.compile import builtin_calibration_sources, calibration_images, compile_model
    from mvu.host.compiler.recipes import RECIPES
    from mvu.host.runtime.classify import Classifier
    from mvu.host.runtime.preprocess import PreprocessRecipe, preprocess

    recipe_preprocessing = PreprocessRecipe.from_dict(package.preprocessing)
    images = calibration_images(builtin_calibration_sources(), recipe_preprocessing)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({"input": image[None]} for image in images)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as folder:
        source, folded, target = (Path(folder) / name for name in ("fp32.onnx", "folded.onnx", "int8.onnx"))
        onnx.save(RECIPES[recipe]()[0], source)
        quant_pre_process(str(source), str(folded), skip_symbolic_shape=True)  # folds BatchNorm into Conv
        quantize_static(str(folded), str(target), Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        int8 = compile_model(str(target), config=package.config, preprocessing=package.preprocessing,
                             labels=package.labels, name=f"{recipe}-onnxruntime-int8", progress=False)
    x = preprocess(image, recipe_preprocessing)
    name = session.get_inputs()[0].name
    expected = session.run(None, {name: x})[0]
    runs = {"onnxruntime": lambda: session.run(None, {name: x})}
    report = {"repeats": repeats, "mvu": {},
              "model": "the recipe quantized by onnxruntime.quantization (QOperator, per-channel int8); "
                       "onnxruntime and mvu run that same int8 model, their runs interleaved"}
    for backend in backends:
        classifier = Classifier(int8, backend)
        logits, _ = classifier.logits(x)  # the first image builds the layers' programs
        report["mvu"][backend] = {"bit_exact_with_onnxruntime": bool(np.array_equal(logits, expected))}
        runs[backend] = lambda classifier=classifier: classifier.logits(x)
        if backend == "reference":
            runs["products"], report["products_engine"] = products_alone(classifier.runner.product_shapes())
    p50 = interleaved_p50_seconds(runs, repeats)
    report["onnxruntime_p50_seconds"] = p50["onnxruntime"]
    for backend in backends:
        report["mvu"][backend].update(p50_seconds=p50[backend], times_onnxruntime=p50[backend] / p50["onnxruntime"])
    if "products" in p50:
        report["products_p50_seconds"] = p50["products"]
        report["products_times_onnxruntime"] = p50["products"] / p50["onnxruntime"]
    return report


def interleaved_p50_seconds(runs: dict, repeats: int) -> dict[str, float]:
    """p50 wall time of each callable, calling them in turn ``repeats`` times (after one untimed round), so that
    a busy moment on the machine slows them all alike."""
    import time

    times = {name: [] for name in runs}
    for round_ in range(repeats + 1):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            if round_:
                times[name].append(time.perf_counter() - started)
    return {name: float(np.median(values)) for name, values in times.items()}


def products_alone(shapes: list[tuple[int, int, int]], *, seed: int = 0):
    """``(callable, engine)``: the ``(M, K, N)`` products of a model imported with its own scales, computed
    and requantized as the reference executor computes them (packed onnxruntime kernels where they are
    exact here, else exact int32 products), with nothing else: the floor under that executor."""
    from mvu.hdl.contract.requantization import float32_significand
    from mvu.host.executors.fused_products import fused_product
    from mvu.host.executors.intmatmul import centred_matmul

    rng = np.random.default_rng(seed)
    runs, engines = [], set()
    for m, k, n in shapes:
        a, w = rng.integers(0, 256, (m, k), dtype=np.uint8), rng.integers(-128, 128, (k, n), dtype=np.int8)
        pairs = [float32_significand(s) for s in rng.uniform(1e-4, 1e-2, n)]
        parameters = np.stack([rng.integers(-999, 999, n), *np.array(pairs).T]).astype(np.int32)
        fused = fused_product(w, parameters, act_signed=False, act_zero_point=3, out_zero_point=0, clamp_min=0,
                              clamp_max=255)
        if fused is None:
            runs.append(lambda a=a, w=w: centred_matmul(a, 3, w))
            engines.add("onnxruntime MatMulInteger, int32 sums")
        else:
            out = np.empty((m, n), np.uint8)
            runs.append(lambda a=a, fused=fused, out=out: fused.run(a, out))
            engines.add("onnxruntime QLinearConv, packed weights, requantized")
    return (lambda: [run() for run in runs]), " and ".join(sorted(engines))
