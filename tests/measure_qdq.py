"""How closely mvu follows onnxruntime on QDQ models (not a unit test: a measurement, run by hand).

Each model is quantized by onnxruntime's static quantizer in its default QDQ format (per-channel int8 weights,
uint8 activations, calibrated on the photos scikit-image ships), compiled by mvu, and run on the labelled
photos of shared/data/images by onnxruntime's QDQ session and by mvu's backends. Reported per model: the images
whose logits are bit-identical, the largest difference in output codes, top-1 agreement, and top-1 accuracy.

    .venv/bin/python tests/measure_qdq.py [--models efficientnet-lite0,resnet18,resnet50] [--opset 21]
        [--limit N] [--backends numpy,reference] [--json PATH]

EfficientNet-Lite0 is shared/data/models/efficientnet-lite0-fp32.onnx (ImageNet weights); ResNet-18/50 are
the recipes (seeded random weights: their accuracy means nothing, their agreement does).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from qdq_models import quantize_qdq

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.compiler.compile import builtin_calibration_sources, calibration_images, compile_model
from mvu.host.compiler.labels import imagenet_labels
from mvu.host.compiler.preprocessing import with_preprocessing
from mvu.host.compiler.recipes import RECIPES
from mvu.host.runtime.preprocess import EFFICIENTNET_LITE, PreprocessRecipe, preprocess
from mvu.host.runtime.runner import ModelRunner
from mvu.host.tools.evaluation import read_labelled_images

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def float_model(name: str) -> tuple[onnx.ModelProto, dict]:
    """The fp32 model stating its preprocessing, and that preprocessing."""
    if name == "efficientnet-lite0":
        preprocessing = EFFICIENTNET_LITE.to_dict()
        return with_preprocessing(onnx.load(SHARED / "models" / "efficientnet-lite0-fp32.onnx"), preprocessing), \
            preprocessing
    return RECIPES[name]()


def measure(name: str, photos: list[tuple[Path, int]], backends: list[str], folder: Path,
            opset: int | None = None) -> dict:
    fp32, preprocessing = float_model(name)
    steps = PreprocessRecipe.from_dict(preprocessing)
    started = time.perf_counter()
    path = quantize_qdq(fp32, calibration_images(builtin_calibration_sources(), steps), folder, opset=opset)
    package = compile_model(str(path), config=HardwareConfig(), preprocessing=None, labels=imagenet_labels(),
                            name=name, progress=False)
    compiled = time.perf_counter() - started
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_scale = package.model.layers[-1].out_q.scale  # the closing dequantize layer's
    runners = {backend: ModelRunner(package.model, HardwareConfig(), backend) for backend in backends}
    results = {backend: {"identical": 0, "max_code_difference": 0, "top1_agreement": 0, "top1_correct": 0}
               for backend in backends}
    onnxruntime_correct = 0
    for index, (photo, label) in enumerate(photos):
        x = preprocess(photo, steps)
        expected = session.run(None, {input_name: x})[0]
        onnxruntime_correct += int(np.argmax(expected) == label)
        for backend, runner in runners.items():
            got = runner.run(package.model.input_q.quantize(x))
            entry = results[backend]
            entry["identical"] += int(np.array_equal(got, expected))
            codes = int(np.rint(np.abs(got.astype(np.float64) - expected) / output_scale).max())
            entry["max_code_difference"] = max(entry["max_code_difference"], codes)
            entry["top1_agreement"] += int(np.argmax(got) == np.argmax(expected))
            entry["top1_correct"] += int(np.argmax(got) == label)
        print(f"\r{name}: {index + 1}/{len(photos)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    count = len(photos)
    return {"model": name, "opset": onnx.load(path).opset_import[0].version, "images": count, "compile_seconds": round(compiled, 1),
            "onnxruntime_top1": onnxruntime_correct / count,
            "backends": {backend: {"bit_identical": entry["identical"] / count,
                                   "max_code_difference": entry["max_code_difference"],
                                   "top1_agreement": entry["top1_agreement"] / count,
                                   "top1": entry["top1_correct"] / count} for backend, entry in results.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet-lite0,resnet18,resnet50")
    parser.add_argument("--opset", type=int, help="convert the float models to this opset first")
    parser.add_argument("--backends", default="numpy,reference")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if not (SHARED / "images" / "labels.csv").is_file():
        raise SystemExit(f"shared data absent ({SHARED})")
    photos = read_labelled_images(SHARED / "images", SHARED / "images" / "labels.csv")[:args.limit]
    reports = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            (Path(folder) / name).mkdir()
            reports.append(measure(name, photos, args.backends.split(","), Path(folder) / name, args.opset))
            report = reports[-1]
            for backend, entry in report["backends"].items():
                print(f"{name:<18} opset {report['opset']} {backend:<10} bit-identical {entry['bit_identical']:7.1%}  max code difference "
                      f"{entry['max_code_difference']}  top-1 agreement {entry['top1_agreement']:7.1%}  top-1 "
                      f"{entry['top1']:6.1%} (onnxruntime {report['onnxruntime_top1']:6.1%}) on {report['images']} "
                      f"images")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
