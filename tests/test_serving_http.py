"""`mvu serve` over HTTP: tritonclient (Open Inference Protocol v2), TensorFlow Serving REST, raw image
scoring, bad input, limits, batching, metrics."""

import base64
import gzip
import json
import subprocess
import threading
import time

import numpy as np
import pytest
import urllib3

from mvu.host.model.package import load_package
from mvu.host.runtime.classify import Classifier

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")


@pytest.fixture(scope="module")
def server(start_server, toy_package_path):
    return start_server(toy_package_path, f"toy@2={toy_package_path}", "--max-request-bytes", "4000000",
                        "--grpc-port", "-1")


@pytest.fixture(scope="module")
def http():
    return urllib3.PoolManager(retries=False, timeout=30)


@pytest.fixture(scope="module")
def expected_scores(toy_package_path, cat_jpeg):
    """The same image through the same package in this process, on the reference executor."""
    classifier = Classifier(load_package(toy_package_path), "reference")
    logits = classifier.runner.run_batch(classifier.package.model.input_q.quantize(
        __import__("mvu.host.runtime.preprocess", fromlist=["preprocess"]).preprocess(cat_jpeg, classifier.recipe)))
    e = np.exp(logits.astype(np.float64) - logits.max())
    return (e / e.sum()).astype(np.float32)


def _host(server):
    return server.url.split("://")[1]


def test_tritonclient_reads_metadata_and_infers(server, cat_jpeg, expected_scores):
    client = httpclient.InferenceServerClient(_host(server))
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "mvu"
    metadata = client.get_model_metadata("toy")
    assert metadata["versions"] == ["1", "2"]
    assert {i["name"] for i in metadata["inputs"]} == {"images", "input"}
    assert client.is_model_ready("toy", "2")
    for binary in (True, False):  # JPEG bytes need the binary extension; the scores may come either way
        images = httpclient.InferInput("images", [1], "BYTES")
        images.set_data_from_numpy(np.array([cat_jpeg], dtype=object), binary_data=True)
        result = client.infer("toy", [images], outputs=[httpclient.InferRequestedOutput("scores", binary_data=binary)])
        scores = result.as_numpy("scores")
        assert scores.shape == (1, 1000) and scores.dtype == np.float32
        np.testing.assert_array_equal(scores[0], expected_scores[0])
        assert result.get_response()["model_version"] == "2"  # the newest


def test_tritonclient_float_tensor_and_classification(server, toy_package_path, cat_jpeg, expected_scores):
    from mvu.host.runtime.preprocess import PreprocessRecipe, preprocess

    package = load_package(toy_package_path)
    tensor = preprocess(cat_jpeg, PreprocessRecipe.from_dict(package.preprocessing))
    client = httpclient.InferenceServerClient(_host(server))
    batch = np.concatenate([tensor, tensor])
    inputs = httpclient.InferInput("input", list(batch.shape), "FP32")
    inputs.set_data_from_numpy(batch, binary_data=True)
    result = client.infer("toy", [inputs], model_version="1",
                          outputs=[httpclient.InferRequestedOutput("scores", class_count=3)])
    top = result.as_numpy("scores")
    assert top.shape == (2, 3)
    best = int(np.argmax(expected_scores[0]))
    score, index, label = top[0, 0].decode().split(":", 2)
    assert int(index) == best and label == package.labels[best]
    assert float(score) == pytest.approx(float(expected_scores[0, best]), abs=1e-6)


def test_tensorflow_serving_rest(server, http, cat_jpeg, expected_scores):
    image = {"b64": base64.b64encode(cat_jpeg).decode()}
    for body, key in (({"instances": [{"images": image}, {"images": image}]}, "predictions"),
                      ({"signature_name": "serving_default", "instances": [{"images": image}]}, "predictions"),
                      ({"inputs": {"images": [image]}}, "outputs"), ({"inputs": {"images": image}}, "outputs")):
        response = http.request("POST", server.url + "/v1/models/toy/versions/1:predict", json=body)
        assert response.status == 200, response.data
        rows = np.asarray(response.json()[key], np.float32)
        np.testing.assert_array_equal(rows[0], expected_scores[0])
    status = http.request("GET", server.url + "/v1/models/toy").json()
    assert [s["state"] for s in status["model_version_status"]] == ["AVAILABLE", "AVAILABLE"]
    metadata = http.request("GET", server.url + "/v1/models/toy/metadata").json()
    assert metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["images"][
        "dtype"] == "DT_STRING"


@pytest.mark.parametrize("body, message", [
    ({"instances": [{"b64": "AA=="}]}, "instances is a plain list, but expecting list of objects as multiple input "
                                      "tensors required as per tensorinfo_map"),
    ({"instances": [[[0.0]]]}, "instances is a plain list, but expecting list of objects as multiple input "
                               "tensors required as per tensorinfo_map"),
    ({"inputs": [{"b64": "AA=="}]}, "inputs is a plain value/list, but expecting an object as multiple input "
                                    "tensors required as per tensorinfo_map"),
])
def test_tensorflow_serving_rest_wants_named_inputs_for_a_two_input_signature(server, http, body, message):
    """As TensorFlow Serving answers: values that do not name their input are ambiguous with two inputs."""
    response = http.request("POST", server.url + "/v1/models/toy:predict", json=body)
    assert (response.status, response.json()["error"]) == (400, message)


@pytest.mark.parametrize("method, kind", [("classify", "classification"), ("regress", "regression")])
def test_tensorflow_serving_classify_and_regress_answer_as_for_a_predict_signature(server, http, method, kind):
    body = {"examples": [{"x": 1.0}]}
    response = http.request("POST", server.url + f"/v1/models/toy/versions/1:{method}", json=body)
    assert response.status == 400
    assert response.json()["error"] == (f"Expected {kind} signature method_name to be tensorflow/serving/{method}. "
                                        "Was: tensorflow/serving/predict")
    assert http.request("POST", server.url + f"/v1/models/nope:{method}", json=body).status == 404
    other = http.request("POST", server.url + f"/v1/models/toy:{method}", json={"signature_name": "x", **body})
    assert other.status == 400 and "no signature 'x'" in other.json()["error"]


def test_a_tiff_scores_like_the_png_of_its_pixels(server, http, cat_jpeg):
    import io

    from PIL import Image

    cat = Image.open(io.BytesIO(cat_jpeg))
    scores = {}
    for form, options in (("PNG", {}), ("TIFF", {"compression": "tiff_lzw"}), ("TIFF", {"compression": "raw"})):
        encoded = io.BytesIO()
        cat.save(encoded, form, **options)
        response = http.request("POST", server.url + "/score/toy?top=3", body=encoded.getvalue())
        assert response.status == 200, response.data
        scores[form, tuple(options.items())] = response.json()["top"]
    assert len({json.dumps(top) for top in scores.values()}) == 1


def test_curl_posts_a_jpeg_and_gets_top5(server, tmp_path, cat_jpeg, toy_package_path, expected_scores):
    (tmp_path / "cat.jpg").write_bytes(cat_jpeg)
    out = subprocess.run(["curl", "-s", "--data-binary", f"@{tmp_path / 'cat.jpg'}", server.url + "/score/toy"],
                         capture_output=True, check=True, text=True).stdout
    answer = json.loads(out)
    labels = load_package(toy_package_path).labels
    order = np.argsort(-expected_scores[0], kind="stable")[:5]
    assert [t["class"] for t in answer["top"]] == order.tolist()
    assert [t["label"] for t in answer["top"]] == [labels[i] for i in order]
    assert set(answer["timings_ms"]) == {"queue", "preprocess", "executor", "total"}


def _malformed(server, cat_jpeg):
    """(method, path, body, headers, status): every one a client mistake."""
    url = server.url
    infer = url + "/v2/models/toy/infer"
    ok_input = {"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}

    def body(*inputs, **extra):
        return json.dumps({"inputs": list(inputs), **extra})

    jpeg_b64 = base64.b64encode(cat_jpeg).decode()
    image_bytes = len(cat_jpeg).to_bytes(4, "little") + cat_jpeg
    cases = [
        ("POST", infer, b"{not json", {}, 400),
        ("POST", infer, b"", {}, 400),
        ("POST", infer, b"[]", {}, 400),
        ("POST", infer, b"\xff\xfe\x00", {}, 400),
        ("POST", infer, json.dumps({}), {}, 400),
        ("POST", infer, json.dumps({"inputs": []}), {}, 400),
        ("POST", infer, json.dumps({"inputs": "x"}), {}, 400),
        ("POST", infer, json.dumps({"inputs": [5]}), {}, 400),
        ("POST", infer, body({"shape": [1], "datatype": "FP32", "data": [1]}), {}, 400),
        ("POST", infer, body({**ok_input, "name": 7}), {}, 400),
        ("POST", infer, body({**ok_input, "name": "nope"}), {}, 400),
        ("POST", infer, body({**ok_input, "datatype": "FP99"}), {}, 400),
        ("POST", infer, body({**ok_input, "datatype": "INT32"}), {}, 400),
        ("POST", infer, body({**ok_input, "shape": [1, 3, 32]}), {}, 400),
        ("POST", infer, body({**ok_input, "shape": [1, 3, 32, 31]}), {}, 400),
        ("POST", infer, body({**ok_input, "shape": [-1, 3, 32, 32]}), {}, 400),
        ("POST", infer, body({**ok_input, "shape": [1, 3, 32, "32"]}), {}, 400),
        ("POST", infer, body({**ok_input, "shape": "1,3,32,32"}), {}, 400),
        ("POST", infer, body({**ok_input, "data": [0.0] * 3071}), {}, 400),
        ("POST", infer, body({**ok_input, "data": ["a"] * 3072}), {}, 400),
        ("POST", infer, body({**ok_input, "data": [float("nan")] * 3072}), {}, 400),
        ("POST", infer, body({**ok_input, "shape": [0, 3, 32, 32], "data": []}), {}, 400),
        ("POST", infer, body({key: v for key, v in ok_input.items() if key != "data"}), {}, 400),
        ("POST", infer, body(ok_input, ok_input), {}, 400),
        ("POST", infer, body(ok_input, outputs=[{"name": "logits"}]), {}, 400),
        ("POST", infer, body(ok_input, outputs=[{"name": "scores", "parameters": {"classification": 5000}}]), {}, 400),
        ("POST", infer, body(ok_input, outputs=[{"name": "scores", "parameters": {"classification": "3"}}]), {}, 400),
        ("POST", infer, body(ok_input, outputs=["scores"]), {}, 400),
        ("POST", infer, body(ok_input, outputs=[{"name": "scores", "parameters": {"class_count": 3}}]), {}, 400),
        ("POST", infer, body(ok_input, outputs=[{"name": "scores", "parameters": {"classification": 2.5}}]), {}, 400),
        ("POST", infer, body(ok_input, parameters={"binary_data_output": "yes"}), {}, 400),
        ("POST", infer, body(ok_input, parameters={"timeout": -5}), {}, 400),
        ("POST", infer, body(ok_input, id=12), {}, 400),
        ("POST", infer, body({"name": "images", "shape": [1], "datatype": "BYTES", "data": ["not an image"]}), {}, 400),
        ("POST", infer, body({"name": "images", "shape": [1], "datatype": "BYTES", "data": [1]}), {}, 400),
        ("POST", infer, body({"name": "images", "shape": [2], "datatype": "BYTES", "data": ["x"]}), {}, 400),
        ("POST", infer, body({"name": "images", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]}), {}, 400),
        ("POST", infer, body({"name": "images", "shape": [1], "datatype": "FP32", "data": [1.0]}), {}, 400),
        # The binary extension, wrong in every way that a length can be.
        ("POST", infer, json.dumps({"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                                                "parameters": {"binary_data_size": len(image_bytes)}}]}).encode()
         + image_bytes, {"Inference-Header-Content-Length": "abc"}, 400),
        ("POST", infer, b"{}", {"Inference-Header-Content-Length": "99"}, 400),
        ("POST", infer, b"{}", {"Inference-Header-Content-Length": "-1"}, 400),
        ("POST", infer, json.dumps({"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                                                "parameters": {"binary_data_size": 10 ** 6}}]}).encode() + image_bytes,
         None, 400),
        ("POST", infer, (lambda h: (h, len(h)))(json.dumps({"inputs": [{"name": "images", "shape": [1],
                                                                       "datatype": "BYTES",
                                                                       "parameters": {"binary_data_size": 3}}]}
                                                           ).encode()), None, 400),
        ("POST", infer, (lambda h: (h + b"\x05\x00\x00\x00ab", len(h)))(json.dumps(
            {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                         "parameters": {"binary_data_size": 6}}]}).encode()), None, 400),
        ("POST", infer, (lambda h: (h + image_bytes + b"extra", len(h)))(json.dumps(
            {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                         "parameters": {"binary_data_size": len(image_bytes)}}]}).encode()), None, 400),
        ("POST", infer, (lambda h: (h + b"\x00" * 100, len(h)))(json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                         "parameters": {"binary_data_size": 100}}]}).encode()), None, 400),
        ("POST", infer, (lambda h: (h + b"\x05\x00\x00\x00abcde", len(h)))(json.dumps(
            {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                         "parameters": {"binary_data_size": 9}}]}).encode()), None, 400),
        ("POST", infer, b"x", {"Content-Encoding": "br"}, 415),
        ("POST", infer, b"not gzip", {"Content-Encoding": "gzip"}, 400),
        ("POST", infer, gzip.compress(body(ok_input).encode())[:-30], {"Content-Encoding": "gzip"}, 400),
        ("POST", infer, gzip.compress(body(ok_input).encode()) + b"??", {"Content-Encoding": "gzip"}, 400),
        ("POST", infer, b"", {"Content-Encoding": "deflate"}, 400),
        # Unknown models, versions and endpoints.
        ("POST", url + "/v2/models/nope/infer", body(ok_input), {}, 404),
        ("POST", url + "/v2/models/toy/versions/9/infer", body(ok_input), {}, 404),
        ("GET", url + "/v2/models/nope", None, {}, 404),
        ("GET", url + "/v2/models/toy/versions/0/ready", None, {}, 404),
        ("GET", url + "/v2/nothing", None, {}, 404),
        ("GET", url + "/v2/models/toy/infer", None, {}, 405),
        # TensorFlow Serving REST.
        ("POST", url + "/v1/models/toy:predict", b"{", {}, 400),
        ("POST", url + "/v1/models/toy:predict", json.dumps({}), {}, 400),
        ("POST", url + "/v1/models/toy:predict", json.dumps({"instances": [], "inputs": []}), {}, 400),
        ("POST", url + "/v1/models/toy:predict", json.dumps({"instances": []}), {}, 400),
        ("POST", url + "/v1/models/toy:predict", json.dumps({"instances": {"b64": jpeg_b64}}), {}, 400),
        ("POST", url + "/v1/models/toy:predict", json.dumps({"instances": [{"b64": "%%%"}]}), {}, 400),
        ("POST", url + "/v1/models/toy:predict", json.dumps({"instances": [{"b64": "aGVsbG8="}]}), {}, 400),
        ("POST", url + "/v1/models/toy:predict", json.dumps({"instances": [{"pixels": [1]}]}), {}, 400),
        ("POST", url + "/v1/models/toy:predict", json.dumps({"instances": [[1, 2], [3]]}), {}, 400),
        ("POST", url + "/v1/models/toy:predict", json.dumps({"instances": [{"b64": jpeg_b64}, [1.0]]}), {}, 400),
        ("POST", url + "/v1/models/toy:predict", json.dumps({"instances": [[0.0] * 5]}), {}, 400),
        ("POST", url + "/v1/models/toy:predict", json.dumps({"signature_name": "other", "instances": [[0.0]]}), {},
         400),
        ("POST", url + "/v1/models/toy:predict", json.dumps({"inputs": {"images": []}}), {}, 400),
        ("POST", url + "/v1/models/toy:predict", json.dumps({"instances": [[0]], "extra": 1}), {}, 400),
        ("POST", url + "/v1/models/nope:predict", json.dumps({"instances": [{"b64": jpeg_b64}]}), {}, 404),
        ("POST", url + "/v1/models/toy/versions/3:predict", json.dumps({"instances": [{"b64": jpeg_b64}]}), {}, 404),
        ("GET", url + "/v1/models/nope/metadata", None, {}, 404),
        # Raw image scoring.
        ("POST", url + "/score/toy", b"", {}, 400),
        ("POST", url + "/score/toy", cat_jpeg[: len(cat_jpeg) // 3], {}, 400),
        ("POST", url + "/score/toy", b"GIF89a" + b"\x00" * 20, {}, 400),
        ("POST", url + "/score/toy?top=abc", cat_jpeg, {}, 400),
        ("POST", url + "/score/toy?top=0", cat_jpeg, {}, 400),
        ("POST", url + "/score/toy?top=1001", cat_jpeg, {}, 400),
        ("POST", url + "/score/nope", cat_jpeg, {}, 404),
        # Too large: by Content-Length, and streamed without one.
        ("POST", infer, b"0" * 4_000_001, {}, 413),
        ("POST", url + "/score/toy", (b"0" * 10_000 for _ in range(401)), {}, 413),
        ("POST", infer, (lambda h: (h + bytes(65 * 3 * 32 * 32 * 4), len(h)))(json.dumps(
            {"inputs": [{"name": "input", "shape": [65, 3, 32, 32], "datatype": "FP32",
                         "parameters": {"binary_data_size": 65 * 3 * 32 * 32 * 4}}]}).encode()), None, 413),
    ]
    return cases


def test_fifty_malformed_requests_get_precise_errors_and_the_server_goes_on(server, http, cat_jpeg):
    cases = _malformed(server, cat_jpeg)
    assert len(cases) >= 50
    seen = set()
    for method, url, body, headers, status in cases:
        headers = dict(headers or {})
        if isinstance(body, tuple):
            body, headers["Inference-Header-Content-Length"] = body[0], str(body[1])
        kwargs = {"body": body, "headers": headers}
        if body is not None and not isinstance(body, (bytes, str)):
            kwargs["chunked"] = True
        response = http.request(method, url, **kwargs)
        assert response.status == status, (url, body if isinstance(body, (str, bytes)) and len(body) < 300 else "",
                                           response.status, response.data[:300])
        message = response.json()["error"]
        assert message and "Traceback" not in message and "File \"" not in message
        seen.add(message)
    assert len(seen) >= 45  # the messages say what differs
    response = http.request("POST", server.url + "/score/toy", body=cat_jpeg)
    assert response.status == 200 and len(response.json()["top"]) == 5
    assert http.request("GET", server.url + "/v2/health/ready").status == 200
    assert "Traceback" not in server.stderr


@pytest.mark.parametrize("body, headers, message", [
    (b'{"inputs": [}', {}, "the inference request is not valid JSON (it goes wrong at line 1, column 13)"),
    (b"not gzip", {"Content-Encoding": "gzip"}, "the request body is not valid gzip data (Content-Encoding: gzip)"),
    (gzip.compress(b'{"inputs": []}')[:-9], {"Content-Encoding": "gzip"},
     "the request body is not valid gzip data: it ends before its compressed data does"),
    (b"", {"Content-Encoding": "gzip"}, "the request body is not valid gzip data: it is empty"),
    (gzip.compress(b'{"inputs": []}') + b"xyz", {"Content-Encoding": "gzip"},
     "the request body has 3 bytes after the end of its gzip data"),
    (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}]}), {},
     "input 'input': data is not FP32: its lists are not all of one length (the data must be a rectangular array)"),
    (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2], "data": [1, "two"]}]}), {},
     "input 'input': data is not FP32: it holds a value that is not a number"),
    (json.dumps({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1], "data": [300]}]}), {},
     "input 'input': data is not UINT8: a value is out of its range"),
    (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3072}],
                 "outputs": [{"name": "scores", "parameters": {"class_count": 3}}]}), {},
     "output 'scores': unknown parameter 'class_count' (tritonclient's class_count is sent as 'classification'); "
     "an output takes 'classification' and 'binary_data'"),
])
def test_400s_say_what_is_wrong_in_the_requests_terms(server, http, body, headers, message):
    """Not in the words of the library that found it (json, zlib, numpy, Pillow)."""
    response = http.request("POST", server.url + "/v2/models/toy/infer", body=body, headers=headers)
    assert (response.status, response.json()["error"]) == (400, message)


def test_truncated_images_are_described_without_pillows_words(server, http, cat_jpeg):
    response = http.request("POST", server.url + "/score/toy", body=cat_jpeg[:len(cat_jpeg) // 2])
    assert response.status == 400
    assert response.json()["error"] == ("input 'images': cannot read image images[0]: corrupt or truncated image "
                                        "data")


def test_two_different_binary_header_lengths_are_a_400(server, http):
    headers = urllib3.HTTPHeaderDict({"Inference-Header-Content-Length": "2"})
    headers.add("Inference-Header-Content-Length", "3")
    response = http.request("POST", server.url + "/v2/models/toy/infer", body=b"{}{", headers=headers)
    assert response.status == 400
    assert response.json()["error"] == "2 different Inference-Header-Content-Length headers: ['2', '3']"


def test_request_timeout_is_a_504(server, http):
    images = np.zeros((64, 3, 32, 32), np.float32)  # ~0.2 s of work on the reference executor
    header = json.dumps({"inputs": [{"name": "input", "shape": list(images.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": images.nbytes}}],
                         "parameters": {"timeout": 1000}}).encode()  # microseconds, as Triton has it
    response = http.request("POST", server.url + "/v2/models/toy/infer", body=header + images.tobytes(),
                            headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status == 504 and "did not answer within 0.001 s" in response.json()["error"]


def test_concurrent_clients_are_batched_and_counted(start_server, toy_package_path, http, cat_jpeg):
    server = start_server(toy_package_path, "--grpc-port", "-1", "--max-batch-size", "8",
                          "--max-queue-delay-ms", "100")
    results = []

    def client():
        response = http.request("POST", server.url + "/score/toy", body=cat_jpeg)
        results.append((response.status, response.json()["top"][0]["class"]))

    threads = [threading.Thread(target=client) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 12 and len(set(results)) == 1 and results[0][0] == 200
    metrics = http.request("GET", server.url + "/metrics").data.decode()
    batches = _metric(metrics, 'mvu_batch_size_count{model="toy",version="1"}')
    assert _metric(metrics, 'mvu_images_total{model="toy",version="1"}') == 12
    assert batches < 12  # some requests shared a batch
    assert _metric(metrics, 'mvu_requests_total{endpoint="score",protocol="score",status="200"}') == 12
    for phase in ("queue", "preprocess", "executor", "total"):
        assert _metric(metrics, f'mvu_inference_seconds_count{{model="toy",phase="{phase}",version="1"}}') == 12
    access = [json.loads(line) for line in server.access_log.splitlines()]
    assert sum(1 for entry in access if entry["path"] == "/score/toy" and entry["status"] == 200) == 12


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_python_client_and_score_command_against_the_server(server, cat_jpeg, expected_scores, tmp_path):
    from mvu.host.tools.cli import main
    from mvu.host.tools.client import ScoringClient, ScoringError

    with ScoringClient(server.url, retries=1) as client:
        assert client.is_live() and client.is_ready("toy")
        answer = client.score_image(cat_jpeg, top=3, model="toy", version="1")
        assert [t["class"] for t in answer["top"]] == np.argsort(-expected_scores[0], kind="stable")[:3].tolist()
        assert set(client.last_timing) >= {"queue", "preprocess", "executor", "total"}
        np.testing.assert_array_equal(client.infer_images([cat_jpeg, cat_jpeg], "toy")[1], expected_scores[0])
        with pytest.raises(ScoringError) as error:
            client.predict(np.zeros((1, 3, 8, 8), np.float32), "toy")
        assert error.value.status == 400 and "shape must be" in str(error.value)
        assert client.last_attempts == 1  # a 400 is never retried
    (tmp_path / "cat.jpg").write_bytes(cat_jpeg)
    assert main(["score", server.url, str(tmp_path / "cat.jpg"), "--model", "toy", "--json"]) == 0


def test_health_answers_while_a_long_batch_runs(server, http):
    """The executor has its own thread: a big request does not hold up health checks or metadata."""
    images = np.zeros((64, 3, 32, 32), np.float32)  # the queue's limit
    request = {"inputs": [{"name": "input", "shape": list(images.shape), "datatype": "FP32",
                           "parameters": {"binary_data_size": images.nbytes}}],
               "outputs": [{"name": "scores", "parameters": {"binary_data": True}}]}
    header = json.dumps(request).encode()
    finished = []

    def big():
        for _ in range(4):  # one after another: the executor stays busy long enough to watch
            response = http.request("POST", server.url + "/v2/models/toy/infer", body=header + images.tobytes(),
                                    headers={"Inference-Header-Content-Length": str(len(header))})
            finished.append(response.status)

    worker = threading.Thread(target=big)
    worker.start()
    latencies = []
    while worker.is_alive() and len(latencies) < 200:
        started = time.perf_counter()
        assert http.request("GET", server.url + "/v2/health/ready").status == 200
        latencies.append(time.perf_counter() - started)
    worker.join()
    assert finished == [200] * 4
    assert len(latencies) >= 5, "the batches finished too fast to tell"
    assert sorted(latencies)[len(latencies) // 2] < 0.05


def test_the_rtl_executor_serves_the_same_scores(start_server, toy_package_path, cat_jpeg, expected_scores):
    """Bit-exact executors give identical scores through the server."""
    rtl = start_server(toy_package_path, "--backend", "verilator", "--grpc-port", "-1", timeout=600)
    client = httpclient.InferenceServerClient(_host(rtl))
    deadline = time.monotonic() + 600
    while not client.is_model_ready("toy"):  # the Verilator model builds (or loads) in the background
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.get_model_metadata("toy")["platform"] == "mvu_verilator"
    images = httpclient.InferInput("images", [1], "BYTES")
    images.set_data_from_numpy(np.array([cat_jpeg], dtype=object))
    np.testing.assert_array_equal(client.infer("toy", [images]).as_numpy("scores")[0], expected_scores[0])


def test_an_image_bomb_is_refused_from_its_header(start_server, toy_package_path, http):
    import io

    from PIL import Image

    server = start_server(toy_package_path, "--grpc-port", "-1", "--max-image-pixels", "1000000")
    bomb = io.BytesIO()
    Image.new("P", (2000, 2000)).save(bomb, "PNG")  # a few kB that would decode to 4 Mpixel
    response = http.request("POST", server.url + "/score/toy", body=bomb.getvalue())
    assert response.status == 400 and "image too large (2000x2000" in response.json()["error"]
    assert "limit 1,000,000" in response.json()["error"]
    # Above Pillow's own guard (about 179 Mpixel) the limit named is still the server's, not 100,000,000.
    huge = http.request("POST", server.url + "/score/toy", body=_png_header(20_000, 10_000))
    assert huge.status == 400
    assert huge.json()["error"] == ("input 'images': cannot read image images[0]: image too large (more than the "
                                    "limit of 1,000,000 pixels)")


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and that holds no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
