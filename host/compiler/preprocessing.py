"""How a model wants its input made, as the model itself states it.

An ONNX model says it in its ``metadata_props``, under the key :data:`PREPROCESSING_KEY`
(``mvu.preprocessing``): the JSON of a :class:`~mvu.host.runtime.preprocess.PreprocessRecipe` dictionary,
e.g. ``{"resize": 256, "crop": 224, "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}``
(pixels 0..255; optional ``layout``, ``color``, ``interpolation``). The recipes' graphs carry it
(:func:`with_preprocessing`), and tools that keep metadata (onnxruntime's quantizer does) pass it on.
"""

from __future__ import annotations

import json
import sys

import onnx

from mvu.host.compiler.onnx_file import ModelImportError, cause

__all__ = ["PREPROCESSING_KEY", "assumed_preprocessing", "model_preprocessing", "with_preprocessing"]

PREPROCESSING_KEY = "mvu.preprocessing"


def with_preprocessing(model: onnx.ModelProto, preprocessing: dict) -> onnx.ModelProto:
    """``model`` (changed in place) stating ``preprocessing`` in its metadata, replacing any it stated."""
    onnx.helper.set_model_props(model, {**{entry.key: entry.value for entry in model.metadata_props},
                                        PREPROCESSING_KEY: json.dumps(preprocessing, separators=(",", ":"))})
    return model


def model_preprocessing(model: onnx.ModelProto, label: str) -> dict | None:
    """The preprocessing ``model`` states (checked), or None when it states none."""
    from mvu.host.runtime.preprocess import PreprocessRecipe

    text = next((entry.value for entry in model.metadata_props if entry.key == PREPROCESSING_KEY), None)
    if text is None:
        return None
    try:
        return PreprocessRecipe.from_dict(json.loads(text)).to_dict()
    except (ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
        raise ModelImportError(f"{label}: its metadata '{PREPROCESSING_KEY}' is not a preprocessing recipe "
                               f"({cause(error)})") from None


def assumed_preprocessing(label: str) -> dict:
    """torchvision's ImageNet preprocessing, announced on stderr: the model states none and none was given."""
    from mvu.host.runtime.preprocess import TORCHVISION

    print(f"mvu: WARNING: {label} does not say how its input is made (no '{PREPROCESSING_KEY}' in its "
          f"metadata_props) and no --preprocess was given: ASSUMING torchvision's ImageNet normalization (resize "
          f"{TORCHVISION.resize}, crop {TORCHVISION.crop}, mean {_rgb(TORCHVISION.mean)}, std {_rgb(TORCHVISION.std)}"
          f" on 0..255). A model trained with other preprocessing will classify poorly: pass --preprocess.",
          file=sys.stderr)
    return TORCHVISION.to_dict()


def _rgb(values: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.4g}" for v in values)
