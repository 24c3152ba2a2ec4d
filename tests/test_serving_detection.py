"""`mvu serve` with a detector: TF Serving's detection outputs over KServe v2 and TF Serving, HTTP and gRPC."""

import base64

import grpc
import numpy as np
import pytest
import urllib3

from mvu.host.runtime.detect import Detector, tf_detection_outputs
from mvu.host.runtime.preprocess import preprocess
from mvu.host.serving.protos import message_class
from mvu.host.serving.served_model import DETECTION_OUTPUTS

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

SHAPES = {"detection_boxes": (1, 100, 4), "detection_scores": (1, 100), "detection_classes": (1, 100),
          "num_detections": (1,)}


@pytest.fixture(scope="module")
def server(start_server, small_detector_path):
    return start_server(small_detector_path, "--max-batch-size", "2", timeout=120)


@pytest.fixture(scope="module")
def expected(small_detector_path, cat_jpeg):
    from mvu.host.model.package import load_package

    detector = Detector(load_package(small_detector_path), "reference")
    detections, _ = detector.detect_tensors(preprocess(cat_jpeg, detector.recipe))
    return tf_detection_outputs(detections, 100)


def _check(outputs: dict, expected: dict) -> None:
    assert set(outputs) == set(DETECTION_OUTPUTS)
    for name in DETECTION_OUTPUTS:
        value = np.asarray(outputs[name], np.float32).reshape(SHAPES[name])
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    assert expected["num_detections"][0] > 0 and expected["detection_classes"][0, 0] >= 1


def test_kserve_http_metadata_and_infer(server, cat_jpeg, expected):
    client = httpclient.InferenceServerClient(server.url.split("://")[1])
    metadata = client.get_model_metadata("ssd")
    assert [(o["name"], o["shape"]) for o in metadata["outputs"]] == [
        ("detection_boxes", [-1, 100, 4]), ("detection_scores", [-1, 100]), ("detection_classes", [-1, 100]),
        ("num_detections", [-1])]
    images = httpclient.InferInput("images", [1], "BYTES")
    images.set_data_from_numpy(np.array([cat_jpeg], dtype=object), binary_data=True)
    result = client.infer("ssd", [images])
    _check({name: result.as_numpy(name) for name in DETECTION_OUTPUTS}, expected)


def test_kserve_grpc_infer(server, cat_jpeg, expected):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    images = grpcclient.InferInput("images", [1], "BYTES")
    images.set_data_from_numpy(np.array([cat_jpeg], dtype=object))
    result = client.infer("ssd", [images])
    _check({name: result.as_numpy(name) for name in DETECTION_OUTPUTS}, expected)


def test_tensorflow_serving_rest_predict(server, cat_jpeg, expected):
    http = urllib3.PoolManager(retries=False, timeout=60)
    body = {"instances": [{"images": {"b64": base64.b64encode(cat_jpeg).decode()}}]}
    response = http.request("POST", server.url + "/v1/models/ssd:predict", json=body)
    assert response.status == 200, response.data
    (row,) = response.json()["predictions"]
    _check({name: [row[name]] for name in DETECTION_OUTPUTS}, expected)
    score = http.request("POST", server.url + "/score/ssd", body=cat_jpeg)
    assert score.status == 400 and "is a detector" in score.json()["error"]


def test_tensorflow_serving_grpc_predict(server, cat_jpeg, expected):
    from mvu.host.serving.tfserving_grpc import tensor_from_proto

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        predict = channel.unary_unary(
            "/tensorflow.serving.PredictionService/Predict",
            request_serializer=message_class("tensorflow.serving.PredictRequest").SerializeToString,
            response_deserializer=message_class("tensorflow.serving.PredictResponse").FromString)
        request = message_class("tensorflow.serving.PredictRequest")()
        request.model_spec.name = "ssd"
        request.inputs["images"].dtype = 7  # DT_STRING
        request.inputs["images"].tensor_shape.dim.add(size=1)
        request.inputs["images"].string_val.append(cat_jpeg)
        response = predict(request, timeout=60)
        _check({name: tensor_from_proto(name, response.outputs[name]).data for name in response.outputs}, expected)
