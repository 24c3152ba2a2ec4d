"""Image preprocessing for the classifiers: decode, resize, centre-crop, normalize.

A :class:`PreprocessRecipe` says how a model wants its input; it is stored in a
model package's manifest (:meth:`PreprocessRecipe.to_dict`) so that the model
and the way its input is made travel together. :func:`decode_image` turns a
file or bytes into an RGB :class:`PIL.Image.Image`, and :func:`preprocess`
turns that into the float32 ``[1, 3, crop, crop]`` NCHW tensor the model reads.

Decoding decisions:

* Transparency (RGBA, LA, palette or greyscale with a transparent colour) is
  **composited on white**, as a viewer shows the image on a white page. Simply
  dropping alpha would expose whatever colour the encoder left under fully
  transparent pixels (often black, sometimes junk).
* CMYK JPEGs are converted with Pillow's plain CMYK->RGB formula; an embedded
  ICC profile is not applied.
* 16-bit greyscale is scaled to 8 bits (value / 257, rounded).
* EXIF orientation is applied, so a phone photo comes out the right way up.
  An already opened :class:`PIL.Image.Image` handed to :func:`preprocess` is
  taken as it is (converted to RGB, but not rotated): pass the file or bytes to
  get the EXIF handling.
* Only the formats in :data:`SUPPORTED_FORMATS` are opened; for an animated
  GIF or WebP the first frame is used.
* More than :data:`MAX_PIXELS` pixels is refused before any pixel is decoded
  (a decompression-bomb guard). Between Pillow's own warning threshold (about
  89 Mpixel) and this limit Pillow still issues a ``DecompressionBombWarning``.

Every failure to read an image raises :class:`ImageDecodeError`, whose message
names the source and the cause; no Pillow exception escapes. (Truncated files
are caught because the pixels are decoded inside :func:`decode_image`; code
that sets Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` turns that off.)

Geometry:

* resize so that the shorter side equals ``recipe.resize``, keeping the aspect
  ratio; the longer side is ``round(resize * long / short)`` (Python's
  ``round``). Bilinear, as Pillow does it (with antialiasing when shrinking).
* centre crop ``recipe.crop`` square at ``top = (h - crop) // 2``, likewise
  ``left`` (rounding down, as the reference runs in shared/data were made;
  torchvision rounds half to even instead and differs on odd margins)
  (round half to even). A pipeline using ``(h - crop) // 2`` instead cuts one
  pixel higher whenever the half-way point is an odd number and a half (59.5:
  60 here, 59 there), which changes a model's logits slightly.
* ``(pixel - mean) / std`` per channel on pixel values in 0..255, float32.
"""

from __future__ import annotations

import io
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "EFFICIENTNET_LITE",
    "ImageDecodeError",
    "MAX_PIXELS",
    "PreprocessRecipe",
    "SUPPORTED_FORMATS",
    "TORCHVISION",
    "decode_image",
    "preprocess",
    "preprocess_batch",
]

#: Images with more pixels than this are refused (decompression-bomb guard).
MAX_PIXELS = 100_000_000

#: Pillow format names :func:`decode_image` will open: the raster formats Pillow
#: decodes itself or with its bundled libraries. Others are refused: EPS would
#: run Ghostscript, WMF needs a handler, and scientific or game formats (FITS,
#: DDS, ...) are not photos. ``MPO`` is the multi-picture JPEG many cameras write.
SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "WEBP", "PPM", "TIFF", "JPEG2000", "AVIF",
                     "ICO", "TGA", "PCX", "SGI", "QOI")

#: Above this many pixels the resized (not yet cropped) image is not built in
#: full: only the crop window is resampled (see :func:`_resize_and_crop`).
_MAX_RESIZED_PIXELS = 16_000_000

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview]


# --------------------------------------------------------------------------- recipe


def _check_size(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be positive, not {value}")


def _channel_values(name: str, value: Any) -> tuple[float, float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of 3 numbers (R, G, B), not {value!r}")
    if len(value) != 3:
        raise ValueError(f"{name} must have 3 values (R, G, B), not {len(value)}")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{name} must be a sequence of 3 numbers (R, G, B), not {value!r}")
    values = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} values must be finite, not {value!r}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class PreprocessRecipe:
    """How to turn an image into a model's input tensor.

    ``resize``: the shorter side after resizing, in pixels. ``crop``: the side
    of the centre square cut from that (at most ``resize``). ``mean`` and
    ``std``: per-channel (R, G, B) values applied as ``(pixel - mean) / std``
    to pixels in 0..255. ``layout``, ``color`` and ``interpolation`` are fixed
    today ("NCHW", "RGB", "bilinear") and are recorded so a manifest says so.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = "NCHW"
    color: str = "RGB"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        _check_size("resize", self.resize)
        _check_size("crop", self.crop)
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) must not be larger than resize ({self.resize})")
        object.__setattr__(self, "mean", _channel_values("mean", self.mean))
        std = _channel_values("std", self.std)
        if not all(v > 0 for v in std):
            raise ValueError(f"std values must be positive, not {self.std!r}")
        object.__setattr__(self, "std", std)
        for name, allowed in (("layout", "NCHW"), ("color", "RGB"), ("interpolation", "bilinear")):
            value = getattr(self, name)
            if value != allowed:
                raise ValueError(f"{name} must be {allowed!r}, not {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (lists, not tuples) that :meth:`from_dict` reads back."""
        return {
            "resize": self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
            "color": self.color,
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PreprocessRecipe":
        """The recipe a :meth:`to_dict` dictionary describes; unknown or missing keys are errors."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a preprocessing recipe must be a mapping, not {type(data).__name__}")
        known = ("resize", "crop", "mean", "std", "layout", "color", "interpolation")
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(f"unknown preprocessing recipe keys: {', '.join(unknown)}")
        missing = [key for key in ("resize", "crop", "mean", "std") if key not in data]
        if missing:
            raise ValueError(f"preprocessing recipe is missing keys: {', '.join(missing)}")
        return cls(**dict(data))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The shape of one preprocessed image: ``(1, 3, crop, crop)``."""
        return (1, 3, self.crop, self.crop)


#: torchvision's ImageNet evaluation transform (ResNet, MobileNetV2, ...):
#: mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) on the 0..1 scale.
TORCHVISION = PreprocessRecipe(
    resize=256,
    crop=224,
    mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
    std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
)

#: The EfficientNet-Lite convention: (pixel - 127) / 128.
EFFICIENTNET_LITE = PreprocessRecipe(resize=256, crop=224, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))


# --------------------------------------------------------------------------- decoding


class ImageDecodeError(ValueError):
    """An image could not be read. ``source`` names it (a path, ``<bytes>`` or a given name)."""

    def __init__(self, source: str, cause: str) -> None:
        super().__init__(f"cannot read image {source}: {cause}")
        self.source = source
        self.cause = cause


class _Unreadable(Exception):
    """An image that opened but cannot be used; the message is the cause."""


def _describe(exc: BaseException, max_pixels: int = MAX_PIXELS) -> str:
    """A short cause for a Pillow (or I/O) exception, in the image's terms: never the library's own text."""
    if isinstance(exc, Image.DecompressionBombError):  # Pillow's own guard, above about 179 Mpixel
        return f"image too large (more than the limit of {max_pixels:,} pixels)"
    if isinstance(exc, Image.UnidentifiedImageError):
        return f"not a supported image (formats: {', '.join(SUPPORTED_FORMATS)})"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return "corrupt or truncated image data"


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as an 8-bit RGB image (a new image unless it already is one)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
            mode in ("P", "L", "RGB", "1") and "transparency" in img.info):
        return _flatten_alpha(img)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale (a 32-bit "I" image is read as 16-bit too).
        values = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        raise _Unreadable("floating-point (mode F) images are not supported")
    return img.convert("RGB")


def _check_dimensions(img: Image.Image, max_pixels: int = MAX_PIXELS) -> None:
    width, height = img.size
    if width < 1 or height < 1:
        raise _Unreadable(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise _Unreadable(f"image too large ({width}x{height} = {width * height:,} pixels, "
                         f"limit {max_pixels:,})")


def _supported_formats() -> list[str]:
    Image.init()
    return [fmt for fmt in SUPPORTED_FORMATS if fmt in Image.OPEN]


def decode_image(source: ImageSource, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a file (path) or encoded bytes into an RGB image, EXIF orientation applied.

    ``name`` is used in error messages instead of the path (or ``<bytes>``).
    Raises :class:`ImageDecodeError` for anything that is not a readable image
    within ``max_pixels``, and :class:`TypeError` for a source of another type.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name if name is not None else "<bytes>"
        data = bytes(source)
        if not data:
            raise ImageDecodeError(label, "no data (0 bytes)")
        opener: Any = io.BytesIO(data)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name if name is not None else str(path)
        try:
            if path.is_dir():
                raise IsADirectoryError(str(path))
            size = path.stat().st_size
        except OSError as exc:
            raise ImageDecodeError(label, _describe(exc)) from exc
        except ValueError as exc:             # e.g. an embedded NUL byte
            raise ImageDecodeError(label, f"invalid path ({exc})") from exc
        if size == 0:
            raise ImageDecodeError(label, "file is empty")
        opener = path
    else:
        raise TypeError(f"an image source must be a path or bytes, not {type(source).__name__}")

    try:
        with Image.open(opener, formats=_supported_formats()) as img:
            _check_dimensions(img, max_pixels)  # from the header, before any pixel is decoded
            img.load()                      # decode now, so truncation shows up here
            # exif_transpose returns a new image (a copy when nothing turns), so
            # the result no longer depends on the file.
            return _to_rgb(ImageOps.exif_transpose(img))
    except _Unreadable as exc:
        raise ImageDecodeError(label, str(exc)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, EOFError, struct.error, ...
        raise ImageDecodeError(label, _describe(exc, max_pixels)) from exc


# --------------------------------------------------------------------------- geometry


def _resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) after resizing so the shorter side is ``shorter``, aspect kept."""
    if width <= height:
        return shorter, int(round(shorter * height / width))
    return int(round(shorter * width / height)), shorter


def _crop_offsets(width: int, height: int, crop: int) -> tuple[int, int]:
    """(top, left) of the centre ``crop`` square, odd margins rounded down."""
    return (height - crop) // 2, (width - crop) // 2


def _resize_and_crop(img: Image.Image, resize: int, crop: int) -> np.ndarray:
    """The centre ``crop`` square of ``img`` resized to shorter side ``resize``, as uint8 HWC."""
    new_w, new_h = _resized_size(img.width, img.height, resize)
    top, left = _crop_offsets(new_w, new_h, crop)
    if new_w * new_h <= _MAX_RESIZED_PIXELS:
        resized = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        return np.asarray(resized)[top:top + crop, left:left + crop]
    # A very elongated image (say 2 x 50,000) would resize to gigabytes. Resample
    # only the crop window: the same filter scale and sample positions, so the
    # result matches the full resize to within 1 (fixed-point rounding).
    sx, sy = img.width / new_w, img.height / new_h
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    return np.asarray(img.resize((crop, crop), Image.Resampling.BILINEAR, box=box))


def _as_rgb_image(image_or_source: Image.Image | ImageSource, name: str | None,
                  max_pixels: int = MAX_PIXELS) -> Image.Image:
    if isinstance(image_or_source, Image.Image):
        try:
            _check_dimensions(image_or_source, max_pixels)
            return _to_rgb(image_or_source)
        except _Unreadable as exc:
            raise ImageDecodeError(name if name is not None else "<image>", str(exc)) from exc
    return decode_image(image_or_source, name, max_pixels)


def _check_recipe(recipe: Any) -> None:
    if not isinstance(recipe, PreprocessRecipe):
        raise TypeError(f"recipe must be a PreprocessRecipe, not {type(recipe).__name__}")


def _preprocess_into(out: np.ndarray, image_or_source: Image.Image | ImageSource,
                     recipe: PreprocessRecipe, name: str | None = None, max_pixels: int = MAX_PIXELS) -> None:
    img = _as_rgb_image(image_or_source, name, max_pixels)
    pixels = _resize_and_crop(img, recipe.resize, recipe.crop).astype(np.float32)
    mean = np.asarray(recipe.mean, dtype=np.float32)
    std = np.asarray(recipe.std, dtype=np.float32)
    out[...] = ((pixels - mean) / std).transpose(2, 0, 1)


def preprocess(image_or_source: Image.Image | ImageSource, recipe: PreprocessRecipe, *,
               name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One image (an open PIL image, a path or encoded bytes) as a float32 ``[1, 3, crop, crop]`` tensor.

    ``name`` stands for the source in error messages (as in :func:`decode_image`); larger images
    than ``max_pixels`` are refused from their header (a server sets it lower than the default).
    """
    _check_recipe(recipe)
    out = np.empty(recipe.shape, dtype=np.float32)
    _preprocess_into(out[0], image_or_source, recipe, name, max_pixels)
    return out


def preprocess_batch(sources: Iterable[Image.Image | ImageSource], recipe: PreprocessRecipe, *,
                     name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Several images as one float32 ``[N, 3, crop, crop]`` batch, in the order given (N may be 0).

    With ``name``, error messages call the image at index i ``name[i]``; ``max_pixels`` as in :func:`preprocess`.
    """
    if isinstance(sources, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)):
        raise TypeError("preprocess_batch takes a sequence of images; use preprocess() for one")
    _check_recipe(recipe)
    items = list(sources)
    out = np.empty((len(items), 3, recipe.crop, recipe.crop), dtype=np.float32)
    for index, item in enumerate(items):
        _preprocess_into(out[index], item, recipe, None if name is None else f"{name}[{index}]", max_pixels)
    return out
