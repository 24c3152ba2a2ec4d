"""SSD300-VGG16 end to end: the recipe compiles, backends agree bit for bit, the quantized detector's boxes follow
onnxruntime's fp32 ones, and bad detectors are refused clearly."""

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.compiler.detection import compile_detector
from mvu.host.compiler.onnx_file import ModelImportError
from mvu.host.compiler.recipes import RECIPES, cached_package, demo_photos
from mvu.host.runtime.detect import DetectionPackageError, Detector, tf_detection_outputs
from mvu.host.runtime.detection import box_iou, postprocess
from mvu.host.runtime.preprocess import preprocess_batch


@pytest.fixture(scope="module")
def package():
    return cached_package("ssd-vgg16", HardwareConfig())


@pytest.fixture(scope="module")
def images(package):
    from mvu.host.runtime.preprocess import PreprocessRecipe

    return preprocess_batch(demo_photos(), PreprocessRecipe.from_dict(package.preprocessing))


def test_recipe_compiles_to_a_detector(package):
    assert package.task == "detection" and len(package.labels) == 81 and package.labels[0] == "background"
    model = package.model
    assert model.shapes[package.detection["boxes"]] == (1, 8732, 4)
    assert model.shapes[package.detection["scores"]] == (1, 8732, 81)
    placements = {layer.kind: layer.placement for layer in model.layers}
    assert placements["l2norm"] == "host" and placements["conv"] == "accelerator"
    dilated = next(layer for layer in model.layers if layer.name == "backbone.extra.0.8")
    assert dilated.attrs["dilations"] == [6, 6] and dilated.placement == "accelerator"


def test_package_round_trip_keeps_the_detection_entry(package, tmp_path):
    from mvu.host.model.package import load_package, save_package

    loaded = load_package(save_package(package, tmp_path / "ssd.mvu"))
    assert loaded.task == "detection" and loaded.detection == package.detection and loaded.labels == package.labels


def test_numpy_equals_reference_bit_for_bit(package, images):
    tensors = {}
    for backend in ("numpy", "reference"):
        detector = Detector(package, backend)
        detector.heads_output(images[:1])
        tensors[backend] = detector.runner.tensors
    for layer in package.model.layers:
        assert np.array_equal(tensors["numpy"][layer.output], tensors["reference"][layer.output]), layer.name


def test_quantized_detections_follow_onnxruntime_fp32(package, images):
    """Each of fp32's 20 best detections matched to the quantized detection of its class that overlaps it most:
    measured mean IoU 0.94-0.97 and mean score difference 0.010-0.017 on the four demo photos."""
    import onnxruntime as ort

    model, _ = RECIPES["ssd-vgg16"]()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    detector = Detector(package, "numpy")
    quantized, _ = detector.detect_tensors(images)
    ious, differences = [], []
    for image, mine in zip(images, quantized):
        boxes, logits = session.run(None, {"input": image[None]})
        (exact,) = postprocess(boxes, logits, detector.priors, detector.settings)
        for box, score, label in zip(exact.boxes[:20], exact.scores[:20], exact.classes[:20]):
            same = mine.classes == label
            overlaps = box_iou(box, mine.boxes[same]) if same.any() else np.zeros(1)
            best = int(np.argmax(overlaps))
            ious.append(overlaps[best])
            differences.append(abs(mine.scores[same][best] - score) if same.any() else 1.0)
    print(f"mean IoU {np.mean(ious):.3f}, mean |score difference| {np.mean(differences):.4f}, "
          f"max {np.max(differences):.4f}")
    assert np.mean(ious) > 0.85 and np.mean(differences) < 0.04


def test_tf_layout(package, images):
    detections, _ = Detector(package, "numpy").detect_tensors(images[:2])
    outputs = tf_detection_outputs(detections, 100)
    assert outputs["detection_boxes"].shape == (2, 100, 4) and outputs["num_detections"].tolist() == [100, 100]
    first = detections[0]
    np.testing.assert_array_equal(outputs["detection_boxes"][0, 0], first.boxes[0][[1, 0, 3, 2]].astype(np.float32))
    assert outputs["detection_classes"][0, 0] == first.classes[0] >= 1


def _two_outputs(shapes) -> onnx.ModelProto:
    """A model with two outputs of the given shapes (Conv + Reshape), 300 x 300 input."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 300, 300])
    nodes, inits, outs = [], [], []
    for i, shape in enumerate(shapes):
        inits += [onnx.numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), f"w{i}"),
                  onnx.numpy_helper.from_array(np.array(shape, np.int64), f"s{i}")]
        nodes += [helper.make_node("Conv", ["input", f"w{i}"], [f"c{i}"], strides=[300, 300]),
                  helper.make_node("Reshape", [f"c{i}", f"s{i}"], [f"o{i}"])]
        outs.append(helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, list(shape)))
    model = helper.make_model(helper.make_graph(nodes, "heads", [x], outs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_detector_without_the_expected_heads_is_refused():
    with pytest.raises(ModelImportError, match=r"box regressions \[N, 8732, 4\] then class logits.*'o0' \[1, 1, 2\]"):
        compile_detector(_two_outputs([(1, 1, 2), (1, 1, 2)]), config=HardwareConfig(), preprocessing=None,
                         labels=None, name="heads")


def test_a_classifier_package_is_no_detector():
    package = cached_package("toy", HardwareConfig())
    with pytest.raises(DetectionPackageError, match="is a classifier, not a detector"):
        Detector(package)


@pytest.mark.slow
def test_reference_equals_verilator_on_one_image(package, images):
    """The whole SSD300 on the RTL model (default configuration): every tensor equal to the reference's."""
    tensors, cycles = {}, 0
    for backend in ("reference", "verilator"):
        detector = Detector(package, backend)
        started = time.perf_counter()
        _, _, stats = detector.heads_output(images[:1])
        tensors[backend] = dict(detector.runner.tensors)
        print(f"{backend}: {time.perf_counter() - started:.1f} s, {stats.cycles} cycles")
        cycles = stats.cycles
    macs = sum(layer.macs for layer in package.model.layers if layer.placement == "accelerator")
    print(f"MAC utilization {macs / (cycles * package.config.macs_per_cycle):.3f}")
    for layer in package.model.layers:
        assert np.array_equal(tensors["reference"][layer.output], tensors["verilator"][layer.output]), layer.name


def test_an_onnx_export_of_the_same_structure_compiles_to_a_detector(tmp_path, capsys):
    """`mvu compile` on an .onnx file with the two heads (SSD300 at an eighth of its channels, COCO's classes)."""
    from mvu.host.compiler.preprocessing import with_preprocessing
    from mvu.host.model.package import load_package
    from mvu.host.runtime.preprocess import TORCHVISION
    from mvu.host.tools.cli import main
    from mvu.models.ssd import COCO_LABELS, ssd300_vgg16

    source = tmp_path / "ssd.onnx"
    onnx.save(with_preprocessing(ssd300_vgg16(width=8, seed=4), {**TORCHVISION.to_dict(), "resize": 300,
                                                                   "crop": 300}), source)
    assert main(["compile", str(source), "-o", str(tmp_path / "ssd.mvu")]) == 0
    package = load_package(tmp_path / "ssd.mvu")
    assert package.task == "detection" and package.labels == COCO_LABELS
    assert any(layer.kind == "l2norm" for layer in package.model.layers)


@pytest.mark.parametrize("attrs", [{"p": 1, "axis": 1}, {"p": 2, "axis": -1}])
def test_other_lp_normalizations_are_refused(attrs):
    from mvu.host.compiler.graph import import_onnx
    from mvu.host.compiler.quantize import check_graph
    from mvu.models.onnx_builder import GraphBuilder

    builder = GraphBuilder("lp", (1, 3, 8, 8))
    x = builder.conv(builder.input_name, np.ones((4, 3, 1, 1), np.float32))
    y = builder.flatten(builder.global_average_pool(builder.node("LpNormalization", [x], **attrs)))
    model = builder.build(y, classes=4)
    with pytest.raises(ModelImportError, match="is not an L2 norm over the channels"):
        check_graph(import_onnx(model))
