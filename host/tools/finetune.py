"""`mvu finetune`: a custom classifier on a featurizer (transfer learning).

The featurizer is a package (a recipe, a compiled .mvu or an .onnx file) cut at the input of its
classifier layer (or a tensor the user names). Its features are extracted on any backend, cached per
image, a softmax head is trained on them on the host (class-balanced, a stratified validation split, early
stopping on the validation loss), quantized to int8 per class, and appended to the featurizer as an
accelerator layer: the result is a package like any other, with the folders' names as labels. Accuracy
is reported with the quantized head's own arithmetic, the one the accelerator computes.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.toolchain import cache_dir
from mvu.host.compiler.compile import IMAGE_SUFFIXES
from mvu.host.model.package import ModelPackage
from mvu.host.model.quantized import Layer, QuantizedModel, QuantParams
from mvu.host.model.stages import head_input, layers_up_to, model_stages
from mvu.host.runtime.preprocess import PreprocessRecipe, preprocess_batch
from mvu.host.runtime.runner import ModelRunner

__all__ = ["Dataset", "read_dataset", "feature_tensor", "extract_features", "train_head", "quantize_head",
           "with_head", "confusion_matrix", "finetune", "FinetuneError"]

_BATCH = 16


class FinetuneError(ValueError):
    """A data set or featurizer that cannot be fine-tuned on; the message says why."""


@dataclass(frozen=True)
class Dataset:
    paths: list[Path]
    labels: np.ndarray  # class index per image
    classes: list[str]


def read_dataset(folder: str | Path, labels_csv: str | Path | None = None) -> Dataset:
    """Images in one subfolder per class (the folder's name is the label), or listed in a CSV with columns
    ``filename`` and ``label``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FinetuneError(f"{folder}: not a folder of images")
    if labels_csv is not None:
        with open(labels_csv, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or not {"filename", "label"} <= set(rows[0]):
            raise FinetuneError(f"{labels_csv}: needs columns filename and label")
        pairs = [(folder / row["filename"], row["label"]) for row in rows]
    else:
        pairs = [(path, sub.name) for sub in sorted(folder.iterdir()) if sub.is_dir()
                 for path in sorted(sub.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    classes = sorted({label for _, label in pairs})
    if len(classes) < 2:
        raise FinetuneError(f"{folder}: needs images of at least two classes (one subfolder per class); "
                            f"found {len(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    return Dataset([path for path, _ in pairs], np.array([index[label] for _, label in pairs]), classes)


def feature_tensor(model: QuantizedModel, layer: str | None = None) -> str:
    """The tensor the head reads: the input of the model's last classifier layer, or ``layer`` (a layer's
    name, whose output is taken, or a tensor's name)."""
    if layer is None:
        cut = head_input(model)
        if cut is None:
            raise FinetuneError("the featurizer has no classifier layer to replace; name one with --layer")
        return cut
    for entry in model.layers:
        if layer in (entry.name, entry.output):
            return entry.output
    raise FinetuneError(f"the featurizer has no layer or tensor {layer!r}")


def _featurizer_key(package: ModelPackage, cut: str) -> str:
    digest = hashlib.sha256(repr((package.config.to_dict(), package.preprocessing, cut)).encode())
    for layer in layers_up_to(package.model, cut):
        digest.update(repr((layer.kind, layer.name, layer.inputs, layer.attrs)).encode())
        for name in sorted(layer.arrays):
            digest.update(np.ascontiguousarray(layer.arrays[name]).tobytes())
    return digest.hexdigest()[:16]


def extract_features(package: ModelPackage, paths: list[Path], cut: str, *, backend: str = "numpy",
                     executor=None, progress: bool = True) -> np.ndarray:
    """The featurizer's uint8 codes of ``cut`` for each image [N, features], from a cache under the build
    cache where an image was seen before (features are bit-exact on every backend)."""
    folder = cache_dir() / "features" / _featurizer_key(package, cut)
    folder.mkdir(parents=True, exist_ok=True)
    keys = [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
    missing = [i for i, key in enumerate(keys) if not (folder / f"{key}.npy").is_file()]
    if missing:
        runner = ModelRunner(package.model, package.config, backend, executor)
        recipe = PreprocessRecipe.from_dict(package.preprocessing)
        for start in range(0, len(missing), _BATCH):
            chunk = missing[start:start + _BATCH]
            with np.errstate(over="ignore"):
                images = package.model.input_q.quantize(preprocess_batch([paths[i] for i in chunk], recipe))
            runner.run_batch(images)
            codes = np.asarray(runner.tensors[cut]).reshape(len(chunk), -1)
            for i, row in zip(chunk, codes):
                np.save(folder / f"{keys[i]}.npy", row)
            if progress:
                print(f"\rfeatures: {min(start + _BATCH, len(missing))}/{len(missing)} images", end="",
                      file=sys.stderr)
        if progress:
            print(file=sys.stderr)
    return np.stack([np.load(folder / f"{key}.npy") for key in keys])


def _split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: about ``fraction`` of each class (at least one image of a class with two or more)."""
    validation = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        take = min(len(members) - 1, max(1, round(fraction * len(members)))) if fraction > 0 else 0
        validation += list(members[:take])
    mask = np.zeros(len(labels), bool)
    mask[validation] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _loss(x, y, w, b, weights, l2) -> float:
    p = _softmax(x @ w + b)[np.arange(len(y)), y]
    return float(-(weights[y] * np.log(np.maximum(p, 1e-12))).sum() / weights[y].sum() + l2 * (w * w).sum())


def train_head(x: np.ndarray, y: np.ndarray, classes: int, *, validation_fraction: float = 0.2, seed: int = 0,
               l2: float = 1e-4, learning_rate: float = 0.003, max_epochs: int = 2000,
               patience: int = 50) -> dict:
    """Multinomial logistic regression on float features (Adam, full batch), class-balanced, early-stopped
    on the validation loss (the training loss without a validation split). Returns ``weight`` [F, C],
    ``bias`` [C], the ``train`` and ``validation`` indexes and the ``epochs`` run."""
    rng = np.random.default_rng(seed)
    train, validation = _split(y, validation_fraction, rng)
    counts = np.bincount(y[train], minlength=classes).astype(np.float64)
    weights = np.where(counts > 0, len(train) / (classes * np.maximum(counts, 1)), 0.0)
    mean, scale = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6  # trained on standardized features
    xs = (x - mean) / scale
    w, b = np.zeros((x.shape[1], classes)), np.zeros(classes)
    moments = [np.zeros_like(w), np.zeros_like(b), np.zeros_like(w), np.zeros_like(b)]
    onehot = np.eye(classes)[y[train]]
    watch = validation if len(validation) else train
    best, best_params, waited, epoch = np.inf, (w.copy(), b.copy()), 0, 0
    for epoch in range(1, max_epochs + 1):
        sample = weights[y[train]][:, None]
        error = (_softmax(xs[train] @ w + b) - onehot) * sample / sample.sum()
        grads = (xs[train].T @ error + 2 * l2 * w, error.sum(axis=0))
        for k, (param, grad) in enumerate(zip((w, b), grads)):
            moments[k] = 0.9 * moments[k] + 0.1 * grad
            moments[k + 2] = 0.999 * moments[k + 2] + 0.001 * grad * grad
            param -= learning_rate * (moments[k] / (1 - 0.9 ** epoch)) / (np.sqrt(moments[k + 2] / (1 - 0.999 ** epoch)) + 1e-8)
        loss = _loss(xs[watch], y[watch], w, b, weights, l2)
        if loss < best - 1e-6:
            best, best_params, waited = loss, (w.copy(), b.copy()), 0
        elif (waited := waited + 1) >= patience:
            break
    w, b = best_params
    # Fold the standardization into the layer: x_std @ w + b = x @ (w / scale) + (b - (mean / scale) @ w).
    return {"weight": w / scale[:, None], "bias": b - (mean / scale) @ w, "train": train,
            "validation": validation, "epochs": epoch}


def quantize_head(weight: np.ndarray, bias: np.ndarray, in_q: QuantParams, name: str = "head") -> Layer:
    """An ``fc`` layer: int8 weights per class, an int32 bias in the sums' units, float logits out."""
    w_scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127.0
    codes = np.clip(np.round(weight / w_scale), -127, 127).astype(np.int8)
    bias_q = np.round(bias / (in_q.scale * w_scale))
    if np.abs(bias_q).max(initial=0) >= 2 ** 31:
        raise FinetuneError("the trained head's bias does not fit int32 at the features' scale")
    return Layer("fc", name, [], "logits", "accelerator", {"in_zero_point": in_q.zero_point},
                 {"weight": codes, "bias": bias_q.astype(np.int64), "w_scale": w_scale.astype(np.float64)},
                 None, int(weight.size))


def head_logits(head: Layer, codes: np.ndarray, in_q: QuantParams) -> np.ndarray:
    """The head's logits from feature codes, as the runtime computes them."""
    acc = (codes.astype(np.int64) - head.attrs["in_zero_point"]) @ head.arrays["weight"].astype(np.int64)
    return ((acc + head.arrays["bias"]) * (in_q.scale * head.arrays["w_scale"])).astype(np.float32)


def with_head(package: ModelPackage, cut: str, head: Layer, classes: list[str], name: str) -> ModelPackage:
    """The featurizer up to ``cut`` followed by ``head``, labelled ``classes``."""
    model = package.model
    layers = layers_up_to(model, cut)
    head = Layer(head.kind, head.name, [cut], head.output, head.placement, head.attrs, head.arrays, None, head.macs)
    report = [row for row in package.report if row.get("layer") in {layer.name for layer in layers}]
    report.append({"layer": head.name, "op": "Gemm (fine-tuned)", "placement": head.placement, "scale": None,
                   "zero_point": None})
    tensors = {layer.output for layer in layers} | {model.input, cut}
    custom = QuantizedModel(model.input, model.input_shape, model.input_q, head.output, [*layers, head],
                            {k: v for k, v in model.tensor_q.items() if k in tensors},
                            {k: v for k, v in model.shapes.items() if k in tensors}, report)
    return ModelPackage(name, custom, package.config, preprocessing=package.preprocessing, labels=classes,
                        source_sha256=package.source_sha256, report=report, stages=model_stages(custom, cut))


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def plot_confusion(matrix: np.ndarray, classes: list[str], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 1.5 + 0.5 * len(classes)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > matrix.max() / 2 else "black")
    figure.colorbar(image)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def finetune(featurizer: ModelPackage, dataset: Dataset, *, name: str, backend: str = "numpy", executor=None,
             layer: str | None = None, validation_fraction: float = 0.2, seed: int = 0,
             progress: bool = True) -> tuple[ModelPackage, dict]:
    """The custom package and a report: accuracies, per-split confusion matrices, the feature tensor."""
    cut = feature_tensor(featurizer.model, layer)
    in_q = featurizer.model.tensor_q.get(cut)
    if in_q is None:
        raise FinetuneError(f"the featurizer's tensor {cut!r} is not quantized; name another with --layer")
    codes = extract_features(featurizer, dataset.paths, cut, backend=backend, executor=executor,
                             progress=progress)
    trained = train_head(in_q.dequantize(codes), dataset.labels, len(dataset.classes),
                         validation_fraction=validation_fraction, seed=seed)
    head = quantize_head(trained["weight"], trained["bias"], in_q)
    predicted = head_logits(head, codes, in_q).argmax(axis=1)
    report = {"features": cut, "feature_size": int(codes.shape[1]), "classes": dataset.classes,
              "images": len(dataset.paths), "epochs": trained["epochs"]}
    for split in ("train", "validation"):
        rows = trained[split]
        if len(rows):
            report[f"{split}_accuracy"] = float((predicted[rows] == dataset.labels[rows]).mean())
            report[f"{split}_confusion"] = confusion_matrix(dataset.labels[rows], predicted[rows],
                                                            len(dataset.classes)).tolist()
    return with_head(featurizer, cut, head, dataset.classes, name), report


def load_featurizer(source: str, config: HardwareConfig) -> ModelPackage:
    """A recipe name (compiled once, cached), a compiled .mvu, or an .onnx file."""
    from mvu.host.compiler.recipes import RECIPES, cached_package, compile_source
    from mvu.host.model.package import load_package

    if source in RECIPES:
        return cached_package(source, config)
    if Path(source).suffix == ".mvu":
        return load_package(source, config)
    return compile_source(source, config=config)
