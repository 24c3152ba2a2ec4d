"""A package's stages (preprocessing -> featurizer -> head) and the featurizer's output served as `features`."""

import base64
import json
import zipfile

import grpc
import numpy as np
import pytest
import urllib3

from mvu.host.model.package import PackageError, load_package, save_package
from mvu.host.model.quantized import VIEW
from mvu.host.model.stages import layers_up_to
from mvu.host.runtime.classify import Classifier
from mvu.host.runtime.preprocess import PreprocessRecipe, preprocess_batch
from mvu.host.serving.protos import message_class


@pytest.fixture(scope="module")
def package(toy_package_path):
    return load_package(toy_package_path)


def test_the_featurizer_ends_where_the_head_begins(package):
    stages = {stage.name: stage for stage in package.stages}
    assert list(stages) == ["preprocessing", "featurizer", "head"]
    head = [layer for layer in package.model.layers if layer.kind in ("fc", "fc_quantized")][-1]
    featurizer, tail = stages["featurizer"], stages["head"]
    assert featurizer.output == head.inputs[0] == tail.input and tail.output == package.model.output
    assert stages["preprocessing"].output == featurizer.input == package.model.input
    inside = layers_up_to(package.model, featurizer.output)
    assert featurizer.accelerator_layers + featurizer.host_layers == sum(layer.placement != VIEW for layer in inside)
    assert any(layer.placement == VIEW for layer in inside)  # the flatten before the head: no work, no bytes moved
    assert featurizer.accelerator_layers + tail.accelerator_layers == \
        sum(layer.placement == "accelerator" for layer in package.model.layers)


def _rewrite_manifest(source, target, change):
    with zipfile.ZipFile(source) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        arrays = archive.read("arrays.npz")
    change(manifest)
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        archive.writestr("arrays.npz", arrays)
    return target


def test_the_manifest_names_the_stages_and_older_packages_get_them_derived(package, toy_package_path, tmp_path):
    with zipfile.ZipFile(toy_package_path) as archive:
        written = json.loads(archive.read("manifest.json"))["stages"]
    assert [entry["name"] for entry in written] == ["preprocessing", "featurizer", "head"]
    assert written[1]["placement"] in ("accelerator", "mixed") and written[0]["placement"] == "host"
    older = _rewrite_manifest(toy_package_path, tmp_path / "older.mvu", lambda m: m.pop("stages"))
    assert load_package(older).stages == package.stages
    again = load_package(save_package(load_package(older), tmp_path / "again.mvu"))
    assert again.stages == package.stages


def test_a_stage_that_names_a_missing_tensor_is_refused(toy_package_path, tmp_path):
    def corrupt(manifest):
        manifest["stages"][1]["output"] = "no_such_tensor"

    bad = _rewrite_manifest(toy_package_path, tmp_path / "bad.mvu", corrupt)
    with pytest.raises(PackageError, match="no_such_tensor"):
        load_package(bad)


def test_features_come_from_the_same_run_for_every_sub_batch(package, cat_jpeg):
    """Three images run as sub-batches of 2 and 1: each image's features equal its run alone."""
    classifier = Classifier(package, "reference")
    images = preprocess_batch([cat_jpeg] * 3, PreprocessRecipe.from_dict(package.preprocessing))
    images[1] = images[1][:, ::-1]  # three different images
    images[2] = images[2][:, :, ::-1]
    logits, features, _ = classifier.logits_and_features(images)
    cut = classifier.features_tensor
    size = int(np.prod(package.model.shapes[cut][1:]))
    assert features.shape == (3, size) and features.dtype == np.float32
    for index in range(3):
        alone_logits, alone, _ = classifier.logits_and_features(images[index:index + 1])
        np.testing.assert_array_equal(alone[0], features[index])
        np.testing.assert_array_equal(alone_logits[0], logits[index])
        codes = classifier.runner.tensors[cut].reshape(1, -1)
        np.testing.assert_array_equal(package.model.tensor_q[cut].dequantize(codes)[0], features[index])
    assert len(np.unique(features, axis=0)) == 3


@pytest.fixture(scope="module")
def servers(start_server, toy_package_path):
    return (start_server(toy_package_path, "--features"), start_server(toy_package_path, "--grpc-port", "-1"))


@pytest.fixture(scope="module")
def expected(package, cat_jpeg):
    images = preprocess_batch([cat_jpeg], PreprocessRecipe.from_dict(package.preprocessing))
    _, features, _ = Classifier(package, "numpy").logits_and_features(images)
    return features


def test_kserve_v2_serves_features_when_asked(servers, expected, cat_jpeg, package):
    with_features, without = servers
    http = urllib3.PoolManager()
    metadata = http.request("GET", with_features.url + "/v2/models/toy").json()
    assert [o["name"] for o in metadata["outputs"]] == ["scores", "features"]
    assert metadata["outputs"][1]["shape"] == [-1, expected.shape[1]]
    pixels = preprocess_batch([cat_jpeg], PreprocessRecipe.from_dict(package.preprocessing))
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(pixels.shape),
                        "data": pixels.ravel().tolist()}]}
    answer = http.request("POST", with_features.url + "/v2/models/toy/infer", json=body).json()
    assert [o["name"] for o in answer["outputs"]] == ["scores", "features"]  # no outputs named: all of them
    np.testing.assert_array_equal(np.float32(answer["outputs"][1]["data"]), expected[0])
    only = http.request("POST", with_features.url + "/v2/models/toy/infer",
                        json=body | {"outputs": [{"name": "features"}]}).json()
    assert [o["name"] for o in only["outputs"]] == ["features"]
    wrong = http.request("POST", with_features.url + "/v2/models/toy/infer",
                         json=body | {"outputs": [{"name": "features", "parameters": {"classification": 2}}]})
    assert wrong.status == 400 and "classification applies to 'scores' only" in wrong.json()["error"]
    refused = http.request("POST", without.url + "/v2/models/toy/infer", json=body | {"outputs": [{"name": "features"}]})
    assert refused.status == 400 and "--features" in refused.json()["error"]
    plain = http.request("POST", without.url + "/v2/models/toy/infer", json=body).json()
    assert [o["name"] for o in plain["outputs"]] == ["scores"]
    config = http.request("GET", with_features.url + "/v2/models/toy/config").json()
    assert [o["name"] for o in config["output"]] == ["scores", "features"]


def test_tensorflow_serving_names_both_outputs(servers, expected, cat_jpeg, package):
    with_features, without = servers
    http = urllib3.PoolManager()
    image = {"b64": base64.b64encode(cat_jpeg).decode()}
    rows = http.request("POST", with_features.url + "/v1/models/toy:predict",
                        json={"instances": [{"images": image}, {"images": image}]}).json()["predictions"]
    assert len(rows) == 2 and set(rows[0]) == {"output_alias", "features"}
    np.testing.assert_array_equal(np.float32(rows[1]["features"]), expected[0])
    columns = http.request("POST", with_features.url + "/v1/models/toy:predict",
                           json={"inputs": {"images": [image]}}).json()["outputs"]
    assert np.float32(columns["features"]).shape == (1, expected.shape[1])
    plain = http.request("POST", without.url + "/v1/models/toy:predict",
                         json={"instances": [{"images": image}]}).json()["predictions"]
    assert np.asarray(plain).shape == (1, len(package.labels))  # one output: its values alone, as before

    with grpc.insecure_channel(f"127.0.0.1:{with_features.grpc_port}") as channel:
        predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                      request_serializer=message_class(
                                          "tensorflow.serving.PredictRequest").SerializeToString,
                                      response_deserializer=message_class(
                                          "tensorflow.serving.PredictResponse").FromString)
        request = message_class("tensorflow.serving.PredictRequest")()
        request.model_spec.name = "toy"
        request.inputs["images"].string_val.append(cat_jpeg)
        request.inputs["images"].dtype = 7  # DT_STRING
        request.inputs["images"].tensor_shape.dim.add(size=1)
        request.output_filter.append("features")
        response = predict(request, timeout=30)
        assert list(response.outputs) == ["features"]
        np.testing.assert_array_equal(np.float32(response.outputs["features"].float_val), expected[0])


def test_a_finetuned_package_records_its_cut(package, tmp_path):
    from mvu.host.tools.finetune import quantize_head, with_head

    cut = next(stage.output for stage in package.stages if stage.name == "featurizer")
    size = int(np.prod(package.model.shapes[cut][1:]))
    rng = np.random.default_rng(0)
    head = quantize_head(rng.normal(size=(size, 3)).astype(np.float32), np.zeros(3, np.float32),
                         package.model.tensor_q[cut])
    custom = load_package(save_package(with_head(package, cut, head, ["a", "b", "c"], "custom"),
                                       tmp_path / "custom.mvu"))
    stages = {stage.name: stage for stage in custom.stages}
    assert stages["featurizer"].output == cut and stages["head"].accelerator_layers == 1
    assert Classifier(custom, "numpy").logits(np.zeros((1, *custom.model.input_shape[1:]), np.float32))[0].shape \
        == (1, 3)
