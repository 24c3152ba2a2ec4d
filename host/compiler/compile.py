"""From an ONNX classifier to a model package: import, calibrate, quantize, package."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.compiler.graph import PREQUANTIZED_OPS, ModelImportError, import_model
from mvu.host.compiler.onnx_file import cause, input_shape, read_onnx
from mvu.host.compiler.preprocessing import assumed_preprocessing, model_preprocessing
from mvu.host.compiler.prequantized import from_qlinear_graph
from mvu.host.compiler.qdq import fold_qdq
from mvu.host.compiler.quantize import calibrate, check_graph, quantize_graph
from mvu.host.model.package import ModelPackage

__all__ = ["IMAGE_SUFFIXES", "calibration_images", "compile_model", "builtin_calibration_sources", "place_for"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def builtin_calibration_sources() -> list[Path]:
    """The real photos that scikit-image ships (a cat, coffee, a rocket, motorcycles, ...)."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg") and p.stat().st_size > 20_000)


def calibration_images(sources: list[Path], recipe, *, limit: int = 64) -> np.ndarray:
    """Preprocessed float images; with few sources, mirrored copies double the set."""
    from mvu.host.runtime.preprocess import ImageDecodeError, preprocess

    images = []
    for source in sources[:limit]:
        try:
            images.append(preprocess(source, recipe)[0])
        except ImageDecodeError as error:
            print(f"mvu: skipping calibration image: {error}", file=sys.stderr)
    if not images:
        raise ValueError("no usable calibration images")
    if len(images) < 16:
        images += [image[:, :, ::-1] for image in images]
    return np.stack(images).astype(np.float32)


def _add_sqnr(quantized, config: HardwareConfig, model: onnx.ModelProto, image: np.ndarray) -> None:
    """Each report row gains ``sqnr_db``: its output against fp32 onnxruntime on one calibration image."""
    import onnxruntime as ort

    from mvu.host.runtime.runner import ModelRunner

    runner = ModelRunner(quantized, config, "numpy")
    runner.run(quantized.input_q.quantize(image[None]))
    wanted = [layer.output for layer in quantized.layers]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in wanted if name not in present)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(None, {session.get_inputs()[0].name: image[None]})))
    by_name = {layer.name: layer for layer in quantized.layers}
    # A product with a fused table writes the table's output: its SQNR is the table's row's.
    by_name.update({layer.attrs["table_layer"]: by_name.pop(layer.name) for layer in quantized.layers
                    if "table_layer" in layer.attrs})
    for row in quantized.report:
        layer = by_name.get(row["layer"])
        if layer is None or row["scale"] is None or layer.output not in reference:
            continue
        expected = reference[layer.output]
        if "channels_last" in layer.attrs:  # a flatten read in channels-last order
            expected = expected.reshape(len(expected), *layer.attrs["channels_last"]).transpose(0, 2, 3, 1)
        expected = expected.reshape(-1).astype(np.float64)
        got = layer.out_q.dequantize(runner.tensors[layer.output]).reshape(-1).astype(np.float64)
        noise = np.sum((expected - got) ** 2)
        row["sqnr_db"] = float(10 * np.log10(np.sum(expected ** 2) / noise)) if noise > 0 else float("inf")


def compile_model(source: str | Path | onnx.ModelProto, *, config: HardwareConfig, preprocessing: dict | None,
                  labels: list[str], calibration: list[Path] | None = None, name: str | None = None,
                  progress: bool = True) -> ModelPackage:
    """Compile ``source`` for ``config``; ``calibration`` lists image files (default: the built-in set).

    ``preprocessing`` None takes the model's own (:mod:`~mvu.host.compiler.preprocessing`), else torchvision's
    with a warning. Every refusal is a :class:`ModelImportError` naming the model, raised before calibration.
    """
    path = not isinstance(source, onnx.ModelProto)
    label = name or (Path(source).stem if path else "model")
    where = str(source) if path else label  # what messages call the model
    try:
        model, digest = read_onnx(source, where)
        if preprocessing is None:
            preprocessing = model_preprocessing(model, where) or assumed_preprocessing(where)
        recipe = _recipe(preprocessing, where)
        height, width = input_shape(model)[2:]
        if (height, width) != (recipe.crop, recipe.crop):
            raise ModelImportError(f"{where}: the model takes {height}x{width} images but the preprocessing crops "
                                   f"{recipe.crop}x{recipe.crop}")
        graph = fold_qdq(import_model(model, digest, where))
        classes = int(np.prod(graph.shapes.get(graph.output, (1, len(labels)))[1:]))
        if labels and len(labels) != classes:
            raise ModelImportError(f"{where}: {len(labels)} labels for {classes} classes")
        if any(node.op in PREQUANTIZED_OPS for node in graph.nodes):
            quantized = from_qlinear_graph(graph)  # its own scales: no calibration
        else:
            check_graph(graph)
            images = calibration_images(calibration or builtin_calibration_sources(), recipe)
            quantized = quantize_graph(graph, calibrate(model, graph, images, progress=progress))
            _add_sqnr(quantized, config, model, images[0])
    except ModelImportError:
        raise
    except Exception as error:  # anything else a model file can provoke: still one line naming it
        raise ModelImportError(f"{where}: cannot compile it ({cause(error)})") from error
    place_for(quantized, config)
    return ModelPackage(label, quantized, config, preprocessing=recipe.to_dict(), labels=labels,
                        source_sha256=graph.source_sha256)


#: Layer kinds whose accelerator form needs an option of the configuration (:class:`HardwareConfig`).
_NEEDS = {"maxpool": "max_pool", "gap": "float32_requant"}


def place_for(quantized, config: HardwareConfig) -> None:
    """Place on the host, in the layers and the report, what ``config`` leaves out the hardware for (a max pool
    without ``max_pool``, a global pool without the float32 post-processor), so that the placement table says
    where each layer will run."""
    moved = {layer.name for layer in quantized.layers
             if layer.placement == "accelerator" and layer.kind in _NEEDS and not getattr(config, _NEEDS[layer.kind])}
    for layer in quantized.layers:
        if layer.name in moved:
            layer.placement = "host"
    for row in quantized.report:
        if row["layer"] in moved:
            row["placement"] = "host"


def _recipe(preprocessing: dict, where: str):
    from mvu.host.runtime.preprocess import PreprocessRecipe

    try:
        return PreprocessRecipe.from_dict(preprocessing)
    except (ValueError, TypeError) as error:
        raise ModelImportError(f"{where}: the preprocessing is not a recipe ({cause(error)})") from None
