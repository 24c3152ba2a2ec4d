"""The `mvu` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mvu.hdl.board_build import BOARDS
from mvu.hdl.contract.config import PRESETS, HardwareConfig, preset
from mvu.host.executors import BACKENDS
from mvu.host.tools.board_performance import MEMORY_CHOICES

__all__ = ["main"]


def _executor(args, config: HardwareConfig):
    """The executor of ``--backend`` (with ``--port``/``--baud`` for a board); None for numpy."""
    from mvu.host.executors import make_executor

    return make_executor(args.backend, config, port=args.port, baud=args.baud)


def _backend_options(default: str, port_option: str = "--port") -> argparse.ArgumentParser:
    """``--backend``, and where the board backend finds its board (``port_option``: where --port means more)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--backend", choices=BACKENDS, default=default)
    options.add_argument(port_option, help="the board's serial port, e.g. /dev/ttyUSB0 (--backend board)")
    options.add_argument("--baud", type=int, default=3_000_000, help="the board link's baud rate (--backend board)")
    return options


def _load_config(path: str | None) -> HardwareConfig:
    """``--config``: a preset's name, or a JSON file; the default configuration without it."""
    if path is None:
        return HardwareConfig()
    if path in PRESETS:
        return preset(path)
    try:
        return HardwareConfig.from_dict(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as error:
        raise SystemExit(f"mvu: bad hardware configuration {path}: {error}") from None


def _print_gemm_report(report: dict) -> None:
    print(f"GEMM {report['m']} x {report['k']} x {report['n']} on {report['backend']}: "
          f"bit_exact={report['bit_exact']}")
    if "cycles" in report:
        mem = report["memory_model"]
        print(f"  cycles               {report['cycles']:,}")
        print(f"  MAC utilization      {100 * report['mac_utilization']:.1f} %")
        print(f"  modelled latency     {report['modelled_latency_ms']:.3f} ms at {report['config']['clock_mhz']:g} MHz")
        print(f"  memory model         {mem['latency_cycles']} cycles latency, {mem['bytes_per_cycle']:g} B/cycle; "
              f"{100 * report['memory_bandwidth_used']:.1f} % of it used")
        print(f"  simulation           {report['sim_seconds']:.2f} s, {report['sim_cycles_per_second']:,.0f} cycles/s, "
              f"{report['sim_macs_per_second']:.3g} MAC/s")
    else:
        print(f"  wall time            {report['sim_seconds']:.3f} s")


def _cmd_bench(args) -> int:
    from mvu.host.tools.benchmarks import bench_gemm

    config = _load_config(args.config)
    report = bench_gemm(config, args.m, args.k, args.n, backend=args.backend, seed=args.seed,
                        latency=args.latency, bytes_per_cycle=args.bandwidth)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_gemm_report(report)
    return 0 if report["bit_exact"] else 1


def _bench_images(folder: str | None, count: int) -> list[Path]:
    """``count`` images: a folder's (sorted), or the demo photos, repeated in turn as needed."""
    from itertools import cycle, islice

    from mvu.host.compiler.compile import IMAGE_SUFFIXES
    from mvu.host.compiler.recipes import demo_photos

    if count < 1:
        raise SystemExit("mvu bench network: --count must be at least 1")
    if folder is None:
        found = demo_photos()
    elif not Path(folder).is_dir():
        raise SystemExit(f"mvu bench network: --images {folder}: no such folder")
    else:
        found = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise SystemExit(f"mvu bench network: --images {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return list(islice(cycle(found), count))


def _cmd_bench_network_cluster(args, config: HardwareConfig) -> int:
    from mvu.host.tools.benchmarks import bench_network_cluster

    images = _bench_images(args.images, args.count)
    try:
        report = bench_network_cluster(args.model, config, args.cluster, images=images,
                                       backends=tuple(args.backends.split(",")))
    except ConnectionError as error:
        raise SystemExit(f"mvu bench network: {error}") from None
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["bit_exact"] else 1
    print(f"{args.model}: {len(images)} images on {args.cluster} ({report['worker_threads']} worker threads), "
          f"bit_exact={report['bit_exact']} across {args.backends}")
    for backend, entry in report["backends"].items():
        line = f"  {backend:<10} {entry['wall_seconds']:7.2f} s wall, {entry['images_per_second']:.2f} images/s"
        if "cycles_per_image" in entry:
            line += (f"; {entry['cycles_per_image']:,.0f} cycles per image = {entry['modelled_ms']:.1f} ms "
                     f"modelled, MAC utilization {entry['mac_utilization']:.1%}, "
                     f"{entry['cluster_macs_per_second']:.3g} MAC/s simulated by the cluster")
        print(line)
    return 0 if report["bit_exact"] else 1


def _print_simulated_memory(report: dict) -> None:
    memory = report["memory"]
    model = memory["model"]
    what = "the simulator's default" if model is None else (
        f"{model['latency_cycles']} cycles latency, {model['bytes_per_cycle']:.3f} B/cycle, "
        f"{model['max_outstanding']} reads in flight")
    print(f"  memory {memory['name']} ({what}); timed at {memory['clock_mhz']:.1f} MHz: {memory['clock_source']}")


def _cmd_bench_network(args) -> int:
    from mvu.host.tools.benchmarks import bench_network

    config = _load_config(args.config)
    if args.cluster:
        return _cmd_bench_network_cluster(args, config)
    report = bench_network(args.model, config, image=args.image, backends=tuple(args.backends.split(",")),
                           compare_onnxruntime=args.onnxruntime, memory=args.memory, network=not args.layer_by_layer)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["bit_exact"] else 1
    print(f"{args.model} on {report['image']}: bit_exact={report['bit_exact']} across {args.backends}")
    _print_simulated_memory(report)
    for backend, entry in report["backends"].items():
        line = f"  {backend:<10} {entry['wall_seconds']:7.2f} s wall, top-1 {entry['top1']['label']}"
        if "warm_seconds" in entry:
            line += f", next image {1e3 * entry['warm_seconds']:.0f} ms"
        if "cycles" in entry:
            line += (f"; {entry['cycles']:,} cycles = {entry['modelled_ms']:.1f} ms modelled, "
                     f"MAC utilization {entry['mac_utilization']:.1%}, {entry['sim_macs_per_second']:.3g} MAC/s simulated")
        print(line)
        print(f"  {'':<10} host layers: " + (", ".join(f"{n} {kind}" for kind, n in entry["host_layers"].items()) or "none")
              + f"; {entry['program']}")
    if "onnxruntime_int8" in report:
        ort_int8 = report["onnxruntime_int8"]
        print("  the network quantized by onnxruntime (int8, QOperator), the same model on both, batch 1:")
        print(f"    onnxruntime {1e3 * ort_int8['onnxruntime_p50_seconds']:8.1f} ms p50")
        for backend, entry in ort_int8["mvu"].items():
            print(f"    mvu {backend:<10} {1e3 * entry['p50_seconds']:6.1f} ms p50 = {entry['times_onnxruntime']:.1f}x, "
                  f"logits bit-exact with onnxruntime: {entry['bit_exact_with_onnxruntime']}")
        if "products_p50_seconds" in ort_int8:
            print(f"    its products alone {1e3 * ort_int8['products_p50_seconds']:.1f} ms "
                  f"= {ort_int8['products_times_onnxruntime']:.1f}x ({ort_int8['products_engine']}: "
                  f"the reference executor's floor)")
    return 0 if report["bit_exact"] else 1


def _cmd_info(args) -> int:
    config = _load_config(args.config)
    print(json.dumps({**config.to_dict(), "fingerprint": f"{config.fingerprint:#010x}",
                      "macs_per_cycle": config.macs_per_cycle}, indent=2))
    return 0


def _cmd_build(args) -> int:
    if args.board:
        return _build_board(args)
    from mvu.sim.verilator_model import build_model

    print(build_model(_load_config(args.config)))
    return 0


def _build_board(args) -> int:
    """``mvu build --board B``: the board's bitstream (its preset, or ``--config``) and the build's report."""
    from mvu.hdl.board_build import BuildError, build_bitstream, format_report
    from mvu.hdl.resources import ResourceError

    config = _load_config(args.config) if args.config else None
    try:
        build = build_bitstream(args.board, config=config, progress=lambda line: print(line, flush=True))
    except (ResourceError, BuildError) as error:
        raise SystemExit(f"mvu: {error}") from None
    print(json.dumps(build, indent=2) if args.json else format_report(build))
    if build["timing_failures"]:
        raise SystemExit("mvu: timing not met: " + "; ".join(build["timing_failures"]))
    return 0


def _cmd_synth(args) -> int:
    from mvu.hdl.synthesis import synthesize

    report = synthesize(_load_config(args.config), target=args.target)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.target} synthesis of {report['config_description']} in {report['seconds']:.0f} s")
        for cell, count in sorted(report["cells"].items(), key=lambda item: -item[1]):
            print(f"  {cell:<16} {count:>8}")
    return 0


def _print_prediction(prediction, backend: str) -> None:
    timing = (f"{prediction.cycles:,} cycles = {prediction.modelled_ms:.2f} ms at the modelled clock; "
              if prediction.cycles else "")
    print(f"{prediction.source}  [{backend}: {timing}{prediction.seconds['total']:.2f} s wall]")
    for rank, entry in enumerate(prediction.top, 1):
        print(f"  {rank}. {entry['label']:<32} {entry['score']:7.2%}  (class {entry['class']})")


def _cmd_compile(args) -> int:
    from mvu.host.compiler.recipes import compile_source

    config = _load_config(args.config)
    package = compile_source(args.model, config=config, calibration=args.calibration, preprocess=args.preprocess,
                             labels=args.labels)
    from mvu.host.model.package import save_package

    path = save_package(package, args.output)
    placements = {}
    for entry in package.report:
        placements[entry["placement"]] = placements.get(entry["placement"], 0) + 1
    print(f"compiled {args.model} -> {path} ({path.stat().st_size / 1e6:.1f} MB) for {config.describe()}")
    for entry in package.report:
        if args.verbose or entry["placement"] != "accelerator":
            sqnr = f"  SQNR {entry['sqnr_db']:5.1f} dB" if "sqnr_db" in entry else ""
            output = ("float output" if entry["scale"] is None
                      else f"scale {entry['scale']:.4g} zero point {entry['zero_point']}")
            print(f"  {entry['layer']:<28} {entry['op']:<24} -> {entry['placement']:<11} {output}{sqnr}")
    print("  layers: " + ", ".join(f"{count} views (no bytes moved)" if where == "view" else f"{count} on the {where}"
                                   for where, count in sorted(placements.items())))
    print("  stages: " + ", then ".join(f"{stage.name} ({stage.placement}, to {stage.output})"
                                        for stage in package.stages))
    return 0


def _print_confusion(matrix: list[list[int]], classes: list[str]) -> None:
    width = max(5, *(len(name) for name in classes))
    print(" " * (width + 2) + " ".join(f"{name[:width]:>{width}}" for name in classes) + "   (predicted)")
    for name, row in zip(classes, matrix):
        print(f"  {name:<{width}}" + " ".join(f"{count:>{width}}" for count in row))


def _cmd_finetune(args) -> int:
    from mvu.host.model.package import save_package
    from mvu.host.tools.finetune import finetune, load_featurizer, plot_confusion, read_dataset

    config = _load_config(args.config)
    dataset = read_dataset(args.images, args.labels)
    featurizer = load_featurizer(args.featurizer, config)
    package, report = finetune(featurizer, dataset, name=Path(args.output).stem, backend=args.backend,
                               executor=_executor(args, config), layer=args.layer,
                               validation_fraction=args.validation, seed=args.seed)
    path = save_package(package, args.output)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['images']} images, {len(report['classes'])} classes, features {report['features']} "
              f"({report['feature_size']} values); head trained for {report['epochs']} epochs")
        for split in ("train", "validation"):
            if f"{split}_accuracy" in report:
                print(f"{split} accuracy {report[f'{split}_accuracy']:.1%} (the quantized head, as the accelerator "
                      "computes it); confusion:")
                _print_confusion(report[f"{split}_confusion"], report["classes"])
    split = "validation" if "validation_confusion" in report else "train"
    if args.plot:
        import numpy as np

        plot_confusion(np.array(report[f"{split}_confusion"]), report["classes"], args.plot,
                       f"{path.name}: {split} accuracy {report[f'{split}_accuracy']:.1%}")
        print(f"confusion matrix plotted to {args.plot}")
    print(f"wrote {path}")
    return 0


def _cmd_run(args) -> int:
    from mvu.host.model.package import load_package
    from mvu.host.runtime.classify import Classifier
    from mvu.host.runtime.preprocess import ImageDecodeError

    config = _load_config(args.config)
    package = load_package(args.package, config)
    if package.detection is not None:
        from mvu.host.tools.detection_commands import run_detector

        return run_detector(args, package, config, _executor(args, config))
    classifier = Classifier(package, args.backend, config, executor=_executor(args, config))
    results, failed = [], 0
    for image in args.images:
        try:
            prediction = classifier.classify(image, top=args.top)
        except ImageDecodeError as error:
            print(f"mvu: {error}", file=sys.stderr)
            failed += 1
            continue
        results.append(prediction.to_dict())
        if not args.json:
            _print_prediction(prediction, args.backend)
    unlinked = classifier.runner.networks.get(1)
    if isinstance(unlinked, str):  # where the network is not one program, say why
        print(f"mvu: one program per layer: {unlinked}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def _cmd_eval(args) -> int:
    from mvu.host.model.package import load_package
    from mvu.host.tools.evaluation import evaluate

    config = _load_config(args.config)
    package = load_package(args.package, config)
    if package.detection is not None:
        from mvu.host.tools.detection_commands import eval_detector

        return eval_detector(args, package, config, None if args.cluster else _executor(args, config))
    if not args.labels:
        raise SystemExit(f"mvu: {args.package} is a classifier: give --labels (CSV with filename,class_index)")
    report = evaluate(package, args.images, args.labels, backend=args.backend, onnx_model=args.onnx,
                      limit=args.limit, config=config, cluster=args.cluster, package_path=args.package,
                      executor=None if args.cluster else _executor(args, config))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['images']} images on {args.backend}: top-1 {report['top1']:.1%}, top-5 {report['top5']:.1%}")
        if "fp32" in report:
            fp32 = report["fp32"]
            print(f"onnxruntime on the source model: top-1 {fp32['top1']:.1%}, top-5 {fp32['top5']:.1%}; "
                  f"top-1 agreement with mvu {report['agreement_top1']:.1%}")
    return 0


def _cmd_profile(args) -> int:
    from mvu.host.compiler.recipes import demo_photos
    from mvu.host.model.package import load_package
    from mvu.host.runtime.classify import Classifier
    from mvu.host.tools.profile import layer_table, plot_profile

    config = _load_config(args.config)
    package = load_package(args.package, config)
    classifier = Classifier(package, args.backend, config, executor=_executor(args, config), network=False)
    prediction = classifier.classify(args.image or demo_photos()[0])
    print(layer_table(prediction.layers, config))
    if args.plot:
        plot_profile(prediction.layers, config, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _cmd_demo(args) -> int:
    from mvu.host.compiler.recipes import cached_package, demo_photos
    from mvu.host.runtime.classify import Classifier

    config = _load_config(args.config)
    package = cached_package("efficientnet-lite0", config)
    print(f"mvu demo: EfficientNet-Lite0 (real ImageNet weights), quantized by mvu, on the RTL model of "
          f"the accelerator ({config.describe()})")
    classifier = Classifier(package, "verilator", config)
    for photo in demo_photos():
        _print_prediction(classifier.classify(photo, top=5), "verilator")
    return 0


def _recipe_names() -> list[str]:
    from mvu.host.compiler.recipes import RECIPES

    return sorted(RECIPES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvu", description="open matrix-vector-unit accelerator")
    parser.add_argument("--config", help="hardware configuration: a preset (" + ", ".join(PRESETS) + ") or a "
                                         "JSON file (default: the built-in default)")
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_kinds = bench.add_subparsers(dest="kind", required=True)
    gemm = bench_kinds.add_parser("gemm", help="a random quantized matrix product, checked against the reference")
    gemm.add_argument("--m", type=int, default=300)
    gemm.add_argument("--k", type=int, default=700)
    gemm.add_argument("--n", type=int, default=500)
    gemm.add_argument("--backend", choices=("reference", "verilator"), default="verilator")
    gemm.add_argument("--seed", type=int, default=0)
    gemm.add_argument("--latency", type=int, default=40, help="memory model latency in cycles")
    gemm.add_argument("--bandwidth", type=float, default=None,
                      help="memory model bytes per cycle (default: one beat per cycle)")
    gemm.add_argument("--json", action="store_true", help="print the report as JSON")
    gemm.add_argument("--output", help="also write the JSON report to this file")
    gemm.set_defaults(handler=_cmd_bench)

    network = bench_kinds.add_parser("network", help="one image through a model recipe on several backends")
    network.add_argument("model", help="a recipe name, e.g. resnet50 or efficientnet-lite0")
    network.add_argument("--image", help="an image file (default: the cat photo)")
    network.add_argument("--backends", default="reference,verilator", help="comma-separated backends")
    network.add_argument("--onnxruntime", action="store_true",
                         help="also quantize the network with onnxruntime and time that int8 model on "
                              "onnxruntime and on mvu's backends")
    network.add_argument("--cluster", metavar="tcp://HOST:8786",
                         help="run --count images on this Dask cluster's workers and report its throughput")
    network.add_argument("--count", type=int, default=8, help="images to run with --cluster")
    network.add_argument("--images", metavar="DIR", help="with --cluster: take the images from this folder "
                                                        "(default: the demo photos), repeated up to --count")
    network.add_argument("--memory", choices=MEMORY_CHOICES, default="auto",
                         help="the memory the verilator backend simulates, whose clock times its cycles: a board's "
                              "(its controller's latency and bandwidth; timed at the achieved Fmax of the board's "
                              "cached build, else the preset's clock), 'simulator' (40 cycles, a beat per cycle, "
                              "the configuration's clock) or 'auto' (the board's for a board's preset); without --cluster")
    network.add_argument("--layer-by-layer", action="store_true",
                         help="one program per layer, the host between them, instead of the network linked as one "
                              "program")
    network.add_argument("--json", action="store_true")
    network.add_argument("--output", help="also write the JSON report to this file")
    network.set_defaults(handler=_cmd_bench_network)

    info = commands.add_parser("info", help="print the hardware configuration")
    info.set_defaults(handler=_cmd_info)
    build = commands.add_parser("build", help="build (or find in the cache) the Verilator model, or with --board "
                                              "a board's bitstream")
    build.add_argument("--board", choices=sorted(BOARDS),
                       help="synthesize, place and route and pack the board's preset (or --config) into a bitstream")
    build.add_argument("--json", action="store_true", help="print the board build's report as JSON")
    build.set_defaults(handler=_cmd_build)
    synth = commands.add_parser("synth", help="synthesize the design with Yosys and report cells")
    synth.add_argument("--target", choices=("ecp5", "ice40"), default="ecp5")
    synth.add_argument("--json", action="store_true")
    synth.set_defaults(handler=_cmd_synth)
    demo = commands.add_parser("demo", help="classify real photos end to end on the RTL model")
    demo.set_defaults(handler=_cmd_demo)

    compile_ = commands.add_parser("compile", help="quantize and compile an ONNX classifier into a .mvu package")
    compile_.add_argument("model", help="an .onnx file, or a recipe: " + ", ".join(_recipe_names()))
    compile_.add_argument("-o", "--output", required=True, help="the package to write (.mvu)")
    compile_.add_argument("--calibration", help="a folder of images to calibrate on (default: built-in photos)")
    compile_.add_argument("--preprocess", help="torchvision, efficientnet-lite, or a JSON file "
                                               "(default: the recipe's own, torchvision for .onnx files)")
    compile_.add_argument("--labels", help="a file of class names, one per line (default: ImageNet)")
    compile_.add_argument("-v", "--verbose", action="store_true", help="list every layer's placement")
    compile_.set_defaults(handler=_cmd_compile)

    evaluate = commands.add_parser("eval", parents=[_backend_options("numpy")],
                                   help="accuracy on a labelled folder, optionally against fp32 onnxruntime")
    evaluate.add_argument("package")
    evaluate.add_argument("--images", required=True, help="folder of images")
    evaluate.add_argument("--labels", help="CSV with columns filename,class_index (classifiers)")
    evaluate.add_argument("--annotations", help="COCO-style annotations JSON (detectors): reports mAP")
    evaluate.add_argument("--onnx", help="the source model, to compare with onnxruntime running it")
    evaluate.add_argument("--limit", type=int, help="only the first N images")
    evaluate.add_argument("--cluster", metavar="tcp://HOST:8786", help="classify on this Dask cluster's workers")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=_cmd_eval)

    profile = commands.add_parser("profile", parents=[_backend_options("verilator")],
                                  help="per-layer cycles, MAC utilization and time for one image")
    profile.add_argument("package")
    profile.add_argument("--image", help="an image (default: the cat photo)")
    profile.add_argument("--plot", help="write a bar chart of cycles and host time per layer (.png or .svg)")
    profile.set_defaults(handler=_cmd_profile)

    finetune = commands.add_parser("finetune", parents=[_backend_options("numpy")],
                                   help="train a custom classifier head on a featurizer (transfer learning)")
    finetune.add_argument("--featurizer", required=True, help="a recipe (e.g. efficientnet-lite0), .mvu or .onnx")
    finetune.add_argument("--images", required=True, help="one subfolder of images per class (or --labels)")
    finetune.add_argument("--labels", help="a CSV with columns filename,label instead of subfolders")
    finetune.add_argument("-o", "--output", required=True, help="the custom package to write (.mvu)")
    finetune.add_argument("--layer", help="the layer (or tensor) whose output are the features "
                                          "(default: the input of the featurizer's classifier)")
    finetune.add_argument("--validation", type=float, default=0.2, help="fraction of each class held out")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--plot", help="write the confusion matrix as a picture (.png or .svg)")
    finetune.add_argument("--json", action="store_true")
    finetune.set_defaults(handler=_cmd_finetune)

    run = commands.add_parser("run", parents=[_backend_options("reference")], help="classify images with a compiled package")
    run.add_argument("package")
    run.add_argument("images", nargs="+")
    run.add_argument("--top", type=int, default=5, help="classes, or a detector's best detections, per image")
    run.add_argument("--draw", help="(detectors) draw the boxes and labels into this image file")
    run.add_argument("--json", action="store_true")
    run.set_defaults(handler=_cmd_run)

    from mvu.host.tools.control_commands import add_control_commands
    from mvu.host.tools.serving_commands import add_serving_commands

    add_serving_commands(commands, bench_kinds, _backend_options)
    add_control_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mvu.host.compiler.graph import ModelImportError
    from mvu.host.control.workspace import WorkspaceError
    from mvu.host.model.package import PackageError
    from mvu.host.runtime.runner import DeviceMemoryError
    from mvu.host.tools.finetune import FinetuneError

    args = build_parser().parse_args(argv)
    for name in ("m", "k", "n", "top"):
        if getattr(args, name, 1) < 1:
            raise SystemExit(f"mvu: --{name} must be at least 1")
    try:
        return args.handler(args)
    except (ModelImportError, PackageError, WorkspaceError, FinetuneError, DeviceMemoryError, FileNotFoundError,
            ConnectionError) as error:
        # ConnectionError: a board that cannot be reached (LinkError), a Dask scheduler that does not answer
        raise SystemExit(f"mvu: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
