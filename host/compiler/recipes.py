"""Named model recipes, compiling a source (file or recipe) into a package, and the demo's photos."""

from __future__ import annotations

import json
from pathlib import Path

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.compiler.compile import IMAGE_SUFFIXES, compile_model
from mvu.host.compiler.detection import compile_detector, is_detector
from mvu.host.compiler.fingerprint import fingerprint
from mvu.host.compiler.preprocessing import with_preprocessing
from mvu.host.model.package import ModelPackage, PackageError, load_package, save_package

__all__ = ["RECIPES", "compile_source", "cached_package", "demo_photos", "preprocess_presets"]


def _efficientnet_lite0():
    from mvu.models.efficientnet_lite0 import PREPROCESSING, build_efficientnet_lite0

    return build_efficientnet_lite0(), PREPROCESSING


def _architecture(name: str):
    def build():
        from mvu.host.runtime.preprocess import TORCHVISION
        from mvu.models.architectures import build as build_architecture

        return build_architecture(name), TORCHVISION.to_dict()
    return build


def _ssd_vgg16():
    from mvu.host.runtime.preprocess import TORCHVISION
    from mvu.models.ssd import ssd300_vgg16

    return ssd300_vgg16(), {**TORCHVISION.to_dict(), "resize": 300, "crop": 300}


def _toy():
    from mvu.models.toy_classifier import PREPROCESSING, build_toy_classifier

    return build_toy_classifier(), PREPROCESSING


def _stating_preprocessing(build):
    """``build``, whose model also states its preprocessing in its metadata, for whoever saves it."""
    def built():
        model, preprocessing = build()
        return with_preprocessing(model, preprocessing), preprocessing
    return built


#: Recipe name -> a function returning (ONNX model stating its preprocessing, preprocessing dict).
RECIPES = {name: _stating_preprocessing(build) for name, build in {
    "efficientnet-lite0": _efficientnet_lite0, "toy": _toy, "ssd-vgg16": _ssd_vgg16,
    **{name: _architecture(name) for name in ("resnet18", "resnet50", "resnet152", "vgg16", "densenet121")}}.items()}


def preprocess_presets() -> dict:
    from mvu.host.runtime.preprocess import EFFICIENTNET_LITE, TORCHVISION

    return {"torchvision": TORCHVISION.to_dict(), "efficientnet-lite": EFFICIENTNET_LITE.to_dict()}


def _preprocessing(choice: str | None, default: dict | None) -> dict | None:
    if choice is None:
        return default
    presets = preprocess_presets()
    if choice in presets:
        return presets[choice]
    try:
        return json.loads(Path(choice).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise FileNotFoundError(f"--preprocess {choice}: not a preset ({', '.join(presets)}) "
                                f"nor a readable JSON file ({error})") from None


def compile_source(source: str, *, config: HardwareConfig, calibration: str | None = None,
                   preprocess: str | None = None, labels: str | None = None, progress: bool = True) -> ModelPackage:
    """Compile an .onnx file or a recipe name; ``preprocess`` (a preset or a JSON file) overrides the recipe's
    preprocessing, or the one an .onnx file states (without either, torchvision's is assumed, with a warning)."""
    from mvu.host.compiler.labels import imagenet_labels, load_labels

    if source in RECIPES:
        model, default_recipe = RECIPES[source]()
        name = source
    elif Path(source).suffix == ".onnx" or Path(source).exists():
        model, default_recipe, name = source, None, Path(source).stem
    else:
        raise FileNotFoundError(f"{source}: no such file, and not a recipe ({', '.join(sorted(RECIPES))})")
    images = None
    if calibration:
        folder = Path(calibration)
        if not folder.is_dir():
            raise FileNotFoundError(f"--calibration {calibration}: not a folder")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"--calibration {calibration}: no images in it")
    if is_detector(model):
        return compile_detector(model, config=config, preprocessing=_preprocessing(preprocess, default_recipe),
                                labels=load_labels(labels) if labels else None, calibration=images, name=name,
                                progress=progress)
    names = load_labels(labels) if labels else imagenet_labels()
    return compile_model(model, config=config, preprocessing=_preprocessing(preprocess, default_recipe),
                         labels=names, calibration=images, name=name, progress=progress)


def cached_package(recipe: str, config: HardwareConfig) -> ModelPackage:
    """The recipe compiled for ``config``, from the cache when the compiler has not changed since."""
    from mvu.hdl.toolchain import cache_dir

    path = cache_dir() / "models" / f"{recipe}-{config.fingerprint:08x}-{fingerprint()}.mvu"
    if path.exists():
        try:
            return load_package(path, config)
        except PackageError:
            path.unlink()
    package = compile_source(recipe, config=config)
    save_package(package, path)
    return package


def demo_photos() -> list[Path]:
    """Real photos that scikit-image ships: a cat, a cup of coffee, a rocket, a motorcycle."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    return [folder / name for name in ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")]
