"""Image decoding and preprocessing, on images the tests draw themselves with Pillow."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvu.host.runtime import preprocess as pp
from mvu.host.runtime.preprocess import (
    EFFICIENTNET_LITE,
    TORCHVISION,
    ImageDecodeError,
    PreprocessRecipe,
    decode_image,
    preprocess,
    preprocess_batch,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: Raw pixels out: no normalization, so a test can read the cropped pixels back.
RAW = PreprocessRecipe(resize=8, crop=4, mean=(0, 0, 0), std=(1, 1, 1))


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (RGB) and that holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def pixel(img: Image.Image, x: int, y: int) -> np.ndarray:
    return np.asarray(img)[y, x].astype(int)


# ----------------------------------------------------------------------------- recipe


def test_presets():
    assert TORCHVISION.resize == 256 and TORCHVISION.crop == 224
    assert TORCHVISION.mean == pytest.approx((123.675, 116.28, 103.53))
    assert TORCHVISION.std == pytest.approx((58.395, 57.12, 57.375))
    assert EFFICIENTNET_LITE.resize == 256 and EFFICIENTNET_LITE.crop == 224
    assert EFFICIENTNET_LITE.mean == (127.0, 127.0, 127.0)
    assert EFFICIENTNET_LITE.std == (128.0, 128.0, 128.0)
    for recipe in (TORCHVISION, EFFICIENTNET_LITE):
        assert (recipe.layout, recipe.color, recipe.interpolation) == ("NCHW", "RGB", "bilinear")
        assert recipe.shape == (1, 3, 224, 224)


def test_recipe_dict_round_trip_through_json():
    for recipe in (TORCHVISION, EFFICIENTNET_LITE, RAW):
        data = json.loads(json.dumps(recipe.to_dict()))
        assert data == {"resize": recipe.resize, "crop": recipe.crop, "mean": list(recipe.mean),
                        "std": list(recipe.std), "layout": "NCHW", "color": "RGB", "interpolation": "bilinear"}
        assert PreprocessRecipe.from_dict(data) == recipe
    # Lists and ints are taken, stored as tuples of floats (so recipes stay hashable).
    recipe = PreprocessRecipe(resize=10, crop=10, mean=[1, 2, 3], std=[4, 5, 6])
    assert recipe.mean == (1.0, 2.0, 3.0) and recipe.std == (4.0, 5.0, 6.0)
    assert hash(recipe) == hash(PreprocessRecipe.from_dict(recipe.to_dict()))


@pytest.mark.parametrize("data, error, message", [
    ({**TORCHVISION.to_dict(), "scale": 1.0}, ValueError, "unknown preprocessing recipe keys: scale"),
    ({"crop": 224, "resize": 256}, ValueError, "preprocessing recipe is missing keys: mean, std"),
    ([("resize", 256)], TypeError, "a preprocessing recipe must be a mapping, not list"),
])
def test_recipe_from_dict_rejects(data, error, message):
    with pytest.raises(error) as info:
        PreprocessRecipe.from_dict(data)
    assert str(info.value) == message


def test_recipe_from_dict_defaults_the_fixed_fields():
    recipe = PreprocessRecipe.from_dict({"resize": 256, "crop": 224, "mean": [127] * 3, "std": [128] * 3})
    assert recipe == EFFICIENTNET_LITE


GOOD = dict(resize=256, crop=224, mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))


@pytest.mark.parametrize("changes, error, message", [
    ({"resize": 256.0}, TypeError, "resize must be an integer, not 256.0"),
    ({"resize": True}, TypeError, "resize must be an integer, not True"),
    ({"resize": 0}, ValueError, "resize must be positive, not 0"),
    ({"crop": "224"}, TypeError, "crop must be an integer, not '224'"),
    ({"crop": -1}, ValueError, "crop must be positive, not -1"),
    ({"crop": 300}, ValueError, "crop (300) must not be larger than resize (256)"),
    ({"mean": 0.5}, TypeError, "mean must be a sequence of 3 numbers (R, G, B), not 0.5"),
    ({"mean": "abc"}, TypeError, "mean must be a sequence of 3 numbers (R, G, B), not 'abc'"),
    ({"mean": (1.0, 2.0)}, ValueError, "mean must have 3 values (R, G, B), not 2"),
    ({"mean": (1.0, None, 3.0)}, TypeError, "mean must be a sequence of 3 numbers (R, G, B), not (1.0, None, 3.0)"),
    ({"mean": (1.0, float("nan"), 3.0)}, ValueError, "mean values must be finite, not (1.0, nan, 3.0)"),
    ({"std": (1.0, 2.0, 3.0, 4.0)}, ValueError, "std must have 3 values (R, G, B), not 4"),
    ({"std": (1.0, 0.0, 3.0)}, ValueError, "std values must be positive, not (1.0, 0.0, 3.0)"),
    ({"std": (1.0, float("inf"), 3.0)}, ValueError, "std values must be finite, not (1.0, inf, 3.0)"),
    ({"layout": "NHWC"}, ValueError, "layout must be 'NCHW', not 'NHWC'"),
    ({"color": "BGR"}, ValueError, "color must be 'RGB', not 'BGR'"),
    ({"interpolation": "bicubic"}, ValueError, "interpolation must be 'bilinear', not 'bicubic'"),
])
def test_recipe_validation_messages(changes, error, message):
    with pytest.raises(error) as info:
        PreprocessRecipe(**{**GOOD, **changes})
    assert str(info.value) == message


def test_recipe_is_frozen():
    with pytest.raises(AttributeError):
        TORCHVISION.crop = 100  # type: ignore[misc]


# ----------------------------------------------------------------------------- decoding


def test_decode_rgb_jpeg_from_bytes_and_path(tmp_path):
    data = encode(Image.new("RGB", (40, 30), (200, 100, 50)), "JPEG", quality=95)
    path = tmp_path / "solid.jpg"
    path.write_bytes(data)
    for source in (data, bytearray(data), path, str(path)):
        img = decode_image(source)
        assert img.mode == "RGB" and img.size == (40, 30)
        assert np.abs(pixel(img, 20, 15) - (200, 100, 50)).max() <= 3


def test_decode_png_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (200, 100, 50, 255))   # opaque: kept
    rgba.putpixel((1, 0), (0, 0, 0, 0))          # transparent: white
    rgba.putpixel((2, 0), (0, 0, 0, 128))        # half: black over white = grey
    img = decode_image(encode(rgba, "PNG"))
    assert img.mode == "RGB"
    assert list(pixel(img, 0, 0)) == [200, 100, 50]
    assert list(pixel(img, 1, 0)) == [255, 255, 255]
    assert np.abs(pixel(img, 2, 0) - 255 * 127 / 255).max() <= 1


def test_decode_greyscale_alpha_png():
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (30, 255))
    la.putpixel((1, 0), (30, 0))
    img = decode_image(encode(la, "PNG"))
    assert img.mode == "RGB"
    assert list(pixel(img, 0, 0)) == [30, 30, 30]
    assert list(pixel(img, 1, 0)) == [255, 255, 255]


def test_decode_greyscale():
    grey = Image.new("L", (5, 7), 77)
    img = decode_image(encode(grey, "PNG"))
    assert img.mode == "RGB" and img.size == (5, 7)
    assert list(pixel(img, 2, 3)) == [77, 77, 77]


def test_decode_16_bit_greyscale():
    grey = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    img = decode_image(encode(grey, "PNG"))
    assert img.mode == "RGB"
    assert [list(pixel(img, x, 0)) for x in range(3)] == [[0] * 3, [100] * 3, [255] * 3]


def test_decode_palette():
    palette = Image.new("P", (4, 4))
    palette.putpalette([0, 0, 0, 10, 20, 30, 200, 150, 100] + [0] * (256 * 3 - 9))
    palette.putpixel((1, 1), 2)
    palette.putpixel((2, 2), 1)
    img = decode_image(encode(palette, "PNG"))
    assert img.mode == "RGB"
    assert list(pixel(img, 1, 1)) == [200, 150, 100]
    assert list(pixel(img, 2, 2)) == [10, 20, 30]
    assert list(pixel(img, 0, 0)) == [0, 0, 0]


def test_decode_palette_with_transparent_index():
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
    palette.putpixel((1, 0), 1)
    img = decode_image(encode(palette, "PNG", transparency=0))
    assert list(pixel(img, 0, 0)) == [255, 255, 255]
    assert list(pixel(img, 1, 0)) == [10, 20, 30]
    gif = decode_image(encode(palette, "GIF", transparency=0))
    assert list(pixel(gif, 0, 0)) == [255, 255, 255]


def test_decode_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))     # pure red ink
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = decode_image(data)
    assert img.mode == "RGB"
    assert np.abs(pixel(img, 8, 8) - (255, 0, 0)).max() <= 3


def test_decode_applies_exif_orientation():
    # Stored 30 wide x 20 high, red block at the stored top-left. Orientation 6
    # means "rotate 90 degrees clockwise to display": the block ends up top-right.
    stored = Image.new("RGB", (30, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    img = decode_image(encode(stored, "JPEG", quality=95, exif=exif))
    assert img.size == (20, 30)
    assert np.abs(pixel(img, 15, 4) - (255, 0, 0)).max() <= 10
    assert np.abs(pixel(img, 4, 4) - (0, 0, 255)).max() <= 10
    assert np.abs(pixel(img, 15, 25) - (0, 0, 255)).max() <= 10


def test_decode_result_is_independent_of_the_file(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(encode(Image.new("RGB", (3, 3), (1, 2, 3)), "PNG"))
    img = decode_image(path)
    path.unlink()
    assert list(pixel(img, 1, 1)) == [1, 2, 3]


def _decode_error(source, name=None) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(source, name)
    assert isinstance(info.value, ValueError)
    assert "Traceback" not in str(info.value) and "object at 0x" not in str(info.value)
    return info.value


def test_errors_name_the_source(tmp_path):
    jpeg = encode(noise(64, 64), "JPEG", quality=90)

    error = _decode_error(b"\x00\x01garbage" * 10)
    assert error.source == "<bytes>" and str(error).startswith("cannot read image <bytes>: ")
    assert "not a supported image" in error.cause

    error = _decode_error(b"\xff\xd8\xff" + bytes(range(256)) * 4, name="upload.jpg")
    assert error.source == "upload.jpg" and "upload.jpg" in str(error)

    error = _decode_error(jpeg[: len(jpeg) // 2], name="half.jpg")
    assert "half.jpg" in str(error) and "truncated" in error.cause

    error = _decode_error(b"")
    assert str(error) == "cannot read image <bytes>: no data (0 bytes)"

    text = tmp_path / "notes.txt"
    text.write_text("this is not an image\n")
    error = _decode_error(text)
    assert error.source == str(text) and str(text) in str(error) and "not a supported image" in error.cause

    missing = tmp_path / "missing.jpg"
    assert str(_decode_error(missing)) == f"cannot read image {missing}: file not found"
    assert str(_decode_error(str(missing), name="cat")) == "cannot read image cat: file not found"

    assert _decode_error(tmp_path).cause == "is a directory, not a file"

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert str(_decode_error(empty)) == f"cannot read image {empty}: file is empty"

    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg[:-200])
    error = _decode_error(truncated)
    assert error.source == str(truncated) and "truncated" in error.cause


def test_corrupt_png_checksum_is_rejected():
    data = bytearray(encode(noise(16, 16), "PNG"))
    data[60] ^= 0xFF                                  # inside the image data
    _decode_error(bytes(data))


def test_zero_size_and_huge_images_are_rejected():
    _decode_error(png_header_only(0, 10))
    # 20000 x 20000: refused from the header, no pixel decoded (Pillow's own bomb check).
    assert "too large" in _decode_error(png_header_only(20000, 20000)).cause


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_more_than_max_pixels_is_rejected_from_the_header():
    error = _decode_error(png_header_only(11000, 10000), name="big.png")
    assert error.cause == "image too large (11000x10000 = 110,000,000 pixels, limit 100,000,000)"


def test_unsupported_formats_are_refused():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert "not a supported image" in _decode_error(eps).cause
    tiff = encode(Image.new("RGB", (4, 4), (10, 20, 30)), "TIFF", compression="tiff_lzw")
    assert list(pixel(decode_image(tiff), 1, 1)) == [10, 20, 30]
    webp = encode(Image.new("RGB", (4, 4), (0, 128, 255)), "WEBP", lossless=True)
    assert list(pixel(decode_image(webp), 1, 1)) == [0, 128, 255]


def test_decode_rejects_other_source_types():
    with pytest.raises(TypeError, match="must be a path or bytes, not int"):
        decode_image(42)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 3), (3, 7), (224, 224), (640, 480), (333, 500)])
@pytest.mark.parametrize("recipe", [TORCHVISION, EFFICIENTNET_LITE], ids=["torchvision", "efficientnet-lite"])
def test_output_shape_and_dtype(size, recipe):
    out = preprocess(encode(noise(*size), "PNG"), recipe)
    assert out.shape == (1, 3, 224, 224) and out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"] and np.isfinite(out).all()


@pytest.mark.parametrize("recipe, expected", [
    # (pixel - mean) / std worked out by hand for the colour (200, 100, 50):
    # (200 - 123.675) / 58.395, (100 - 116.28) / 57.12, (50 - 103.53) / 57.375
    (TORCHVISION, (1.3070468, -0.2850140, -0.9329847)),
    # (200 - 127) / 128, (100 - 127) / 128, (50 - 127) / 128: exact in binary
    (EFFICIENTNET_LITE, (0.5703125, -0.2109375, -0.6015625)),
])
def test_solid_colour_values(recipe, expected):
    out = preprocess(encode(Image.new("RGB", (300, 200), (200, 100, 50)), "PNG"), recipe)
    for channel in range(3):
        assert np.all(out[0, channel] == np.float32(out[0, channel, 0, 0]))
        assert out[0, channel, 0, 0] == pytest.approx(expected[channel], abs=1e-6)


def test_resized_size_rounds_the_longer_side():
    assert pp._resized_size(300, 200, 256) == (384, 256)
    assert pp._resized_size(200, 300, 256) == (256, 384)
    assert pp._resized_size(500, 333, 256) == (384, 256)   # 384.38
    assert pp._resized_size(333, 500, 256) == (256, 384)
    assert pp._resized_size(375, 500, 256) == (256, 341)   # 341.33
    assert pp._resized_size(3, 700, 256) == (256, 59733)   # 59733.33
    assert pp._resized_size(400, 401, 256) == (256, 257)   # 256.64 rounds up
    assert pp._resized_size(10, 10, 256) == (256, 256)


def test_crop_offsets_round_odd_margins_down():
    assert pp._crop_offsets(256, 256, 224) == (16, 16)
    assert pp._crop_offsets(341, 256, 224) == (16, 58)     # (341 - 224) / 2 = 58.5 -> 58
    assert pp._crop_offsets(256, 343, 224) == (59, 16)     # 59.5 -> 59
    assert pp._crop_offsets(225, 224, 224) == (0, 0)       # 0.5 -> 0


@pytest.mark.parametrize("height, top", [(11, 3), (9, 2), (8, 2)])
def test_centre_crop_offsets_on_a_marked_image(height, top):
    # Width 8 = RAW.resize, so nothing is resampled and the crop reads pixels back.
    # Left offset: (8 - 4) // 2 = 2. Top: (height - 4) // 2: 3.5 -> 3, 2.5 -> 2, 2.0 -> 2.
    values = np.arange(height * 8, dtype=np.uint8).reshape(height, 8)
    image = Image.fromarray(np.stack([values, values // 2, 255 - values], axis=-1))
    out = preprocess(encode(image, "PNG"), RAW)
    assert out.shape == (1, 3, 4, 4)
    window = values[top:top + 4, 2:6].astype(np.float32)
    np.testing.assert_array_equal(out[0, 0], window)
    np.testing.assert_array_equal(out[0, 1], window // 2)
    np.testing.assert_array_equal(out[0, 2], 255 - window)


def test_marked_pixel_lands_at_the_crop_corner():
    image = Image.new("RGB", (8, 11), (0, 0, 0))
    image.putpixel((2, 3), (255, 0, 0))       # (left, top) of the crop window
    image.putpixel((1, 3), (0, 255, 0))       # just left of it
    image.putpixel((2, 2), (0, 0, 255))       # just above it
    out = preprocess(image, RAW)
    assert list(out[0, :, 0, 0]) == [255, 0, 0]
    assert out[0].sum() == 255


def test_preprocess_accepts_images_paths_and_bytes(tmp_path):
    image = noise(50, 40, seed=3)
    data = encode(image, "PNG")
    path = tmp_path / "noise.png"
    path.write_bytes(data)
    from_image = preprocess(image, TORCHVISION)
    np.testing.assert_array_equal(preprocess(data, TORCHVISION), from_image)
    np.testing.assert_array_equal(preprocess(path, TORCHVISION), from_image)
    np.testing.assert_array_equal(preprocess(image.convert("RGBA"), TORCHVISION), from_image)
    # A greyscale PIL image is converted, not refused.
    assert preprocess(image.convert("L"), TORCHVISION).shape == (1, 3, 224, 224)


def test_preprocess_errors():
    with pytest.raises(ImageDecodeError, match=r"^cannot read image <bytes>: "):
        preprocess(b"not an image", TORCHVISION)
    with pytest.raises(ImageDecodeError, match=r"^cannot read image upload\.jpg: "):
        preprocess(b"not an image", TORCHVISION, name="upload.jpg")
    with pytest.raises(ImageDecodeError, match=re.escape("cannot read image <image>: image has no pixels (0x0)")):
        preprocess(Image.new("RGB", (0, 0)), TORCHVISION)
    with pytest.raises(TypeError, match="recipe must be a PreprocessRecipe, not dict"):
        preprocess(Image.new("RGB", (4, 4)), TORCHVISION.to_dict())  # type: ignore[arg-type]


def test_very_elongated_image_resamples_only_the_crop():
    # 2 x 20000 would resize to 256 x 2,560,000 (655 Mpixel) in full.
    image = Image.new("RGB", (2, 20000), (200, 100, 50))
    out = preprocess(image, EFFICIENTNET_LITE)
    assert out.shape == (1, 3, 224, 224)
    assert np.all(out[0, 0] == np.float32(0.5703125))


def test_crop_window_resampling_matches_full_resize(monkeypatch):
    image = noise(97, 61, seed=5)
    full = preprocess(image, RAW)
    monkeypatch.setattr(pp, "_MAX_RESIZED_PIXELS", 0)
    window = preprocess(image, RAW)
    assert np.abs(full - window).max() <= 1


def test_preprocess_batch(tmp_path):
    images = [noise(30, 20, seed=1), noise(20, 30, seed=2), Image.new("L", (9, 9), 5)]
    path = tmp_path / "b.png"
    path.write_bytes(encode(images[1], "PNG"))
    batch = preprocess_batch([images[0], path, encode(images[2], "PNG")], RAW)
    assert batch.shape == (3, 3, 4, 4) and batch.dtype == np.float32
    for index, image in enumerate(images):
        np.testing.assert_array_equal(batch[index], preprocess(image, RAW)[0])
    assert preprocess_batch([], TORCHVISION).shape == (0, 3, 224, 224)
    assert preprocess_batch(iter([images[0]]), RAW).shape == (1, 3, 4, 4)
    with pytest.raises(TypeError, match="use preprocess"):
        preprocess_batch(str(path), RAW)
    with pytest.raises(ImageDecodeError, match=re.escape(str(tmp_path / "nope.jpg"))):
        preprocess_batch([path, tmp_path / "nope.jpg"], RAW)


# ----------------------------------------------------------------------------- shared data (optional)


def test_shared_images_decode_and_preprocess():
    images = SHARED_DATA / "images"
    if not images.is_dir():
        pytest.skip(f"no shared image set at {images}")
    files = sorted(images.glob("*.jpg"))
    assert len(files) == 200
    modes = set()
    for path in files:
        modes.add(Image.open(path).mode)
        out = preprocess(path, TORCHVISION)
        assert out.shape == (1, 3, 224, 224) and out.dtype == np.float32
        assert np.isfinite(out).all()
    assert "L" in modes        # the set holds a few greyscale photos
