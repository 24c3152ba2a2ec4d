"""`mvu run` and `mvu eval` for detector packages: detections printed and drawn, mAP on annotated images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mvu.host.model.package import ModelPackage

__all__ = ["draw_detections", "eval_detector", "run_detector"]

#: Box colours, one per class (cycled).
_PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


def draw_detections(source: Path, entries: list[dict], output: Path) -> None:
    """The image with each detection's box (pixels) and "label score" drawn on it, written to ``output``."""
    from PIL import ImageDraw

    from mvu.host.runtime.preprocess import decode_image

    image = decode_image(source).convert("RGB")
    draw = ImageDraw.Draw(image)
    for entry in entries:
        colour = _PALETTE[entry["class"] % len(_PALETTE)]
        x1, y1, x2, y2 = entry["box"]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=max(2, round(min(image.size) / 200)))
        text = f"{entry['label']} {entry['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        lifted = max(0, y1 - (bottom - top) - 2)
        draw.rectangle([x1, lifted, x1 + right - left + 4, lifted + bottom - top + 2], fill=colour)
        draw.text((x1 + 2, lifted), text, fill=(0, 0, 0))
    output.parent.mkdir(parents=True, exist_ok=True)
    image.save(output)


def _drawing_path(draw: str, index: int, count: int) -> Path:
    path = Path(draw)
    return path if count == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")


def run_detector(args, package: ModelPackage, config, executor) -> int:
    """Detect objects in ``args.images``: the ``args.top`` best detections of each printed (or JSON), and with
    ``args.draw`` drawn (several images: ``out-0.png``, ``out-1.png``, ..)."""
    from mvu.host.runtime.detect import DetectionPackageError, Detector
    from mvu.host.runtime.preprocess import ImageDecodeError

    try:
        detector = Detector(package, args.backend, config, executor=executor)
    except DetectionPackageError as error:
        raise SystemExit(f"mvu: {error}") from None
    results, failed = [], 0
    for index, image in enumerate(args.images):
        try:
            (found,) = detector.detect([image])
        except ImageDecodeError as error:
            print(f"mvu: {error}", file=sys.stderr)
            failed += 1
            continue
        result = found.to_dict(detector.recipe)
        result["detections"] = result["detections"][:args.top]
        results.append(result)
        if args.draw:
            path = _drawing_path(args.draw, index, len(args.images))
            draw_detections(Path(image), result["detections"], path)
            result["drawn"] = str(path)
        if not args.json:
            print(f"{image} ({args.backend}): {len(found.detection.scores)} detections, best {len(result['detections'])}:")
            for entry in result["detections"]:
                print(f"  {entry['score']:.3f}  {entry['label']:<16} box {entry['box']}")
            if args.draw:
                print(f"  drawn to {result['drawn']}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def eval_detector(args, package: ModelPackage, config, executor) -> int:
    """mAP of the package on ``args.images`` with ``args.annotations`` (COCO JSON)."""
    from mvu.host.runtime.detect import DetectionPackageError
    from mvu.host.tools.detection_eval import AnnotationError, evaluate_detector

    if args.cluster:
        print("mvu: --cluster evaluates classifiers; run a detector's evaluation locally", file=sys.stderr)
        return 2
    if not args.annotations:
        print(f"mvu: {args.package} is a detector: give --annotations (COCO-style JSON) instead of --labels",
              file=sys.stderr)
        return 2
    try:
        report = evaluate_detector(package, args.images, args.annotations, backend=args.backend, config=config,
                                   executor=executor, limit=args.limit)
    except (AnnotationError, DetectionPackageError) as error:
        raise SystemExit(f"mvu: {error}") from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['images']} images on {args.backend}, {report['categories']} categories with annotations: "
              f"mAP@0.5 {report['map50']:.3f}, mAP@[.5:.95] {report['map']:.3f}")
    return 0
