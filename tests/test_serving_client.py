"""The scoring client (mvu.host.tools.client), `mvu score` and the load generator, against a stand-in server.

The stand-in is a stdlib HTTP server in a thread that speaks just enough of the
contract of `mvu serve`: POST /score, the Open Inference Protocol v2 infer
endpoint with the binary tensor extension, metadata and health, Server-Timing,
JSON errors, Bearer keys, and scripted failures to exercise retries.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from mvu.host.serving.tensors import encode_bytes_elements
from mvu.host.serving.tensors import encode_bytes_elements as serialize_bytes
from mvu.host.serving.tensors import split_bytes_elements as deserialize_bytes
from mvu.host.tools.client import (
    ScoringClient,
    ScoringError,
    decode_infer_response,
    encode_infer_request,
    parse_server_timing,
)

TIMING = "queue;dur=0.5, preprocess;dur=2.25, executor;dur=10, total;dur=13.5"
CLASSES = 4


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def expected_scores(array: np.ndarray) -> np.ndarray:
    """What the stand-in answers for an FP32 input [N, C, H, W]: softmax of [mean per channel..., 0]."""
    means = array.reshape(len(array), array.shape[1], -1).mean(axis=2)
    logits = np.zeros((len(array), CLASSES), np.float32)
    logits[:, :min(CLASSES, means.shape[1])] = means[:, :CLASSES]
    return _softmax(logits)


def image_scores(items: list[bytes]) -> np.ndarray:
    """What the stand-in answers for a BYTES input: softmax of [length / 100, first byte / 100, 0, 0]."""
    logits = np.array([[len(b) / 100, (b[0] if b else 0) / 100, 0, 0] for b in items], np.float32)
    return _softmax(logits)


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, key: str | None = None):
        super().__init__(("127.0.0.1", 0), Handler)
        self.key = key
        self.script: list[tuple[int, dict]] = []  # answered first, one per request
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: StandIn

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Server-Timing", TIMING)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, document: dict, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(document).encode(), headers=headers)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = {"method": method, "path": self.path, "headers": dict(self.headers), "body": body}
        with self.server.lock:
            self.server.requests.append(record)
            scripted = self.server.script.pop(0) if self.server.script else None
        if scripted:
            status, document = scripted
            return self._json(status, document, {"Retry-After": "0"} if status == 503 else None)
        if self.server.key is not None:
            auth = self.headers.get("Authorization", "")
            if auth not in (f"Bearer {self.server.key}", self.server.key):
                return self._json(401, {"error": "missing or wrong API key"}, {"WWW-Authenticate": "Bearer"})
        path, _, query = self.path.partition("?")
        parts = path.strip("/").split("/")
        if method == "GET" and path == "/v2":
            return self._json(200, {"name": "stand-in", "version": "0", "extensions": ["binary_tensor_data"]})
        if method == "GET" and path in ("/v2/health/live", "/v2/health/ready"):
            return self._send(200, b"")
        if method == "GET" and parts[:2] == ["v2", "models"] and len(parts) in (3, 5):
            if parts[2] != "m":
                return self._json(404, {"error": f"unknown model {parts[2]!r}"})
            return self._json(200, {"name": "m", "versions": ["1"], "platform": "mvu",
                                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, -1, -1]}],
                                    "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, CLASSES]}]})
        if method == "POST" and parts[0] == "score":
            top = int(dict(p.split("=") for p in query.split("&") if p).get("top", 5))
            record["image"] = body
            return self._json(200, {"model_name": parts[1] if len(parts) > 1 else "m",
                                    "model_version": parts[3] if len(parts) > 3 else "1",
                                    "top": [{"class": i, "label": f"label {i}", "score": 1.0 / (i + 2)}
                                            for i in range(top)],
                                    "cycles": len(body), "modelled_ms": 1.5,
                                    "timings_ms": {"queue": 0.5, "preprocess": 2.25, "executor": 10, "total": 13.5}})
        if method == "POST" and parts[:2] == ["v2", "models"] and parts[-1] == "infer":
            return self._infer(parts[2], body, record)
        return self._json(404, {"error": f"no route {path}"})

    def _infer(self, model: str, body: bytes, record: dict) -> None:
        if model != "m":
            return self._json(404, {"error": f"unknown model {model!r}"})
        length = self.headers.get("Inference-Header-Content-Length")
        if length is None:
            return self._json(400, {"error": "this stand-in wants binary tensors"})
        header = json.loads(body[:int(length)])
        (tensor,) = header["inputs"]
        raw = body[int(length):]
        if len(raw) != tensor["parameters"]["binary_data_size"]:
            return self._json(400, {"error": "binary_data_size does not match the body"})
        record["tensor"] = tensor
        if tensor["name"] == "input" and tensor["datatype"] == "FP32":
            scores = expected_scores(np.frombuffer(raw, "<f4").reshape(tensor["shape"]))
        elif tensor["name"] == "images" and tensor["datatype"] == "BYTES":
            items = deserialize_bytes(raw)
            record["items"] = items
            scores = image_scores(items)
        else:
            return self._json(400, {"error": f"unexpected input {tensor['name']} {tensor['datatype']}"})
        data = scores.astype("<f4").tobytes()
        head = json.dumps({"model_name": "m", "model_version": "1", "outputs": [
            {"name": "scores", "datatype": "FP32", "shape": list(scores.shape),
             "parameters": {"binary_data_size": len(data)}}]}).encode()
        self._send(200, head + data, "application/octet-stream", {"Inference-Header-Content-Length": str(len(head))})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


@pytest.fixture
def server():
    stand_in = StandIn()
    thread = threading.Thread(target=stand_in.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield stand_in
    stand_in.shutdown()
    stand_in.server_close()


def client_for(server: StandIn, **options) -> ScoringClient:
    options = {"timeout": 5.0, "retries": 3, "backoff": 0.01, **options}
    return ScoringClient(server.url, **options)


# --------------------------------------------------------------------------- wire format


def test_bytes_tensor_serialization_is_length_prefixed_little_endian():
    assert serialize_bytes([b"ab", b"", b"\x00\xff"]) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x02\x00\x00\x00\x00\xff"
    items = [b"x" * 300, b"", b"\x00\x01"]
    assert deserialize_bytes(serialize_bytes(items)) == items
    with pytest.raises(ValueError, match="truncated"):
        deserialize_bytes(b"\x05\x00\x00\x00abc")


def test_server_timing_parsing():
    assert parse_server_timing(TIMING) == {"queue": 0.5, "preprocess": 2.25, "executor": 10.0, "total": 13.5}
    assert parse_server_timing('cache;desc="hit", db;dur=53;desc="x", app;desc=y;dur="4.5"') == {"db": 53.0,
                                                                                              "app": 4.5}
    assert parse_server_timing(None) == {} and parse_server_timing("") == {}


def test_encode_and_decode_infer_messages():
    array = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    body, headers = encode_infer_request({"input": array}, ["scores"])
    length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:length])
    assert header["inputs"] == [{"name": "input", "shape": [1, 2, 3], "datatype": "FP32",
                                 "parameters": {"binary_data_size": 24}}]
    assert header["outputs"] == [{"name": "scores", "parameters": {"binary_data": True}}]
    assert np.frombuffer(body[length:], "<f4").tolist() == list(range(6))
    # a JSON (non-binary) response decodes too
    _, outputs = decode_infer_response(json.dumps({"outputs": [
        {"name": "scores", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}]}).encode())
    np.testing.assert_array_equal(outputs["scores"], np.array([[0.25, 0.75]], np.float32))
    # binary BYTES and FP32 outputs side by side (a classification answer carries BYTES)
    labels = encode_bytes_elements([b"0.9:281:tabby", b"0.1:282:tiger cat"])
    head = json.dumps({"outputs": [
        {"name": "labels", "datatype": "BYTES", "shape": [1, 2], "parameters": {"binary_data_size": len(labels)}},
        {"name": "scores", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}).encode()
    _, outputs = decode_infer_response(head + labels + np.array([0.5, 2], "<f4").tobytes(), len(head))
    assert outputs["labels"].tolist() == [[b"0.9:281:tabby", b"0.1:282:tiger cat"]]
    np.testing.assert_array_equal(outputs["scores"], [0.5, 2])


# --------------------------------------------------------------------------- client against the stand-in


def test_score_image_from_path_and_bytes(server, tmp_path):
    image = tmp_path / "cat.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    client = client_for(server)
    from_path = client.score_image(image, top=3)
    assert [entry["label"] for entry in from_path["top"]] == ["label 0", "label 1", "label 2"]
    assert server.requests[-1]["path"] == "/score?top=3"
    assert server.requests[-1]["image"] == image.read_bytes()
    assert server.requests[-1]["headers"]["Content-Type"] == "image/jpeg"
    from_bytes = client.score_image(b"raw bytes", model="m", version=2)
    assert server.requests[-1]["path"] == "/score/m/versions/2?top=5"
    assert server.requests[-1]["image"] == b"raw bytes"
    assert from_bytes["cycles"] == len(b"raw bytes") and from_bytes["model_version"] == "2"
    assert client.last_timing == {"queue": 0.5, "preprocess": 2.25, "executor": 10.0, "total": 13.5}


def test_predict_round_trip_with_binary_tensors(server):
    array = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    scores = client_for(server).predict(array, model="m")
    assert scores.dtype == np.float32 and scores.shape == (2, CLASSES)
    np.testing.assert_allclose(scores, expected_scores(array), rtol=1e-6)
    request = server.requests[-1]
    assert request["path"] == "/v2/models/m/infer"
    assert request["headers"]["Content-Type"] == "application/octet-stream"
    assert request["tensor"] == {"name": "input", "shape": [2, 3, 4, 5], "datatype": "FP32",
                                 "parameters": {"binary_data_size": array.nbytes}}
    client_for(server).predict(array.astype(np.float64), model="m", version="1")  # converted to FP32
    assert server.requests[-1]["path"] == "/v2/models/m/versions/1/infer"
    assert server.requests[-1]["tensor"]["datatype"] == "FP32"


def test_infer_images_sends_a_bytes_tensor(server):
    images = [b"\xff\xd8first", b"", b"\x89PNG third one"]
    scores = client_for(server).infer_images(images, model="m")
    request = server.requests[-1]
    assert request["items"] == images
    assert request["tensor"]["datatype"] == "BYTES" and request["tensor"]["shape"] == [3]
    np.testing.assert_allclose(scores, image_scores(images), rtol=1e-6)


def test_retries_on_503_then_succeeds(server):
    server.script = [(503, {"error": "overloaded"}), (503, {"error": "overloaded"})]
    client = client_for(server)
    result = client.score_image(b"image", top=1)
    assert result["top"][0]["class"] == 0
    assert len(server.requests) == 3 and client.last_attempts == 3


def test_retries_give_up_with_the_last_error(server):
    server.script = [(504, {"error": "timed out in the queue"})] * 5
    with pytest.raises(ScoringError) as raised:
        client_for(server, retries=2).score_image(b"image")
    assert raised.value.status == 504 and raised.value.message == "timed out in the queue"
    assert len(server.requests) == 3


def test_no_retry_on_400_and_the_servers_message(server):
    server.script = [(400, {"error": "cannot read image <bytes>: not a supported image"})]
    with pytest.raises(ScoringError) as raised:
        client_for(server).score_image(b"junk")
    assert len(server.requests) == 1
    assert raised.value.status == 400
    assert raised.value.message == "cannot read image <bytes>: not a supported image"
    assert str(raised.value) == "HTTP 400: cannot read image <bytes>: not a supported image"


def test_unknown_model_is_404_without_retry(server):
    with pytest.raises(ScoringError, match="HTTP 404: unknown model 'other'"):
        client_for(server).predict(np.zeros((1, 3, 2, 2), np.float32), model="other")
    assert len(server.requests) == 1


def test_key_is_sent_as_bearer_and_never_shown(server):
    server.key = "s3cret-key"
    client = client_for(server, key="s3cret-key")
    assert client.score_image(b"image")["top"]
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer s3cret-key"
    assert "s3cret" not in repr(client)
    with pytest.raises(ScoringError) as raised:
        client_for(server, key="wrong").score_image(b"image")
    assert raised.value.status == 401 and "s3cret" not in str(raised.value)


def test_connection_errors_are_retried_then_reported():
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ScoringClient(f"http://127.0.0.1:{port}", timeout=2.0, retries=2, backoff=0.01)
    with pytest.raises(ScoringError) as raised:
        client.score_image(b"image")
    assert raised.value.status is None and "cannot reach" in raised.value.message
    assert client.last_attempts == 3
    assert client.is_live() is False


def test_metadata_and_health(server):
    client = client_for(server)
    assert client.server_metadata()["name"] == "stand-in"
    assert client.model_metadata("m")["outputs"][0]["name"] == "scores"
    assert client.is_live() and client.is_ready()
    server.script = [(503, {"error": "not ready"})]
    assert client.is_ready() is False and len(server.requests) == 5  # health checks are not retried


def test_bad_urls_are_refused():
    with pytest.raises(ValueError):
        ScoringClient("ftp://example.org")


# --------------------------------------------------------------------------- mvu score


def _score_args(server: StandIn, images: list[str], **options) -> argparse.Namespace:
    defaults = {"url": server.url, "images": images, "model": None, "version": None, "key": None, "cacert": None,
                "top": 2, "timeout": 5.0, "retries": 1, "json": False}
    return argparse.Namespace(**{**defaults, **options})


def test_score_command_goes_on_after_a_failure(server, tmp_path, monkeypatch):
    from mvu.host.tools.score import main_score

    good = tmp_path / "good.png"
    good.write_bytes(b"\x89PNG\r\n\x1a\n fake")
    server.key = "k3y-from-env"
    monkeypatch.setenv("MVU_API_KEY", "k3y-from-env")
    out, err = io.StringIO(), io.StringIO()
    status = main_score(_score_args(server, [str(tmp_path / "missing.jpg"), str(good)]), out, err)
    assert status == 1
    assert err.getvalue().strip() == f"mvu score: {tmp_path / 'missing.jpg'}: No such file or directory"
    assert "label 0" in out.getvalue() and "good.png" in out.getvalue() and "modelled 1.500 ms" in out.getvalue()
    assert "k3y" not in out.getvalue() + err.getvalue()

    out, err = io.StringIO(), io.StringIO()
    server.script = [(413, {"error": "request body too large"})]
    assert main_score(_score_args(server, [str(good), str(good)], json=True), out, err) == 1
    results = json.loads(out.getvalue())
    assert results[0] == {"image": str(good), "error": "HTTP 413: request body too large"}
    assert results[1]["top"][0]["label"] == "label 0"
    assert err.getvalue().count("\n") == 1 and "good.png: HTTP 413" in err.getvalue()


# --------------------------------------------------------------------------- load generator


def test_load_generator_measures_latency_and_overhead(server):
    from mvu.host.tools.load_generator import run_load

    image = b"\xff\xd8 a jpeg"
    result = run_load(server.url, "m", image, [1, 3], 9, warmup=1)
    assert [level["clients"] for level in result["levels"]] == [1, 3]
    for level in result["levels"]:
        assert level["ok"] == 9 and level["errors"] == 0 and level["throughput_rps"] > 0
        assert level["server_overhead_ms"] == {"p50": 1.25, "p99": 1.25}  # 13.5 - 2.25 - 10
        assert level["overhead_ms"]["p50"] == pytest.approx(level["latency_ms"]["p50"] - 12.25, abs=1e-3)
        assert level["server_timing_ms"]["executor"]["p50"] == 10.0
    infers = [r for r in server.requests if r["path"] == "/v2/models/m/infer"]
    assert len(infers) == 1 + 9 + 9 and all(r["items"] == [image] for r in infers)
    assert infers[0]["body"][-len(image) - 4:] == struct.pack("<I", len(image)) + image  # the BYTES element
    from mvu.host.tools.load_generator import format_table

    report = {"package": "p.mvu", "model": "m", "backend": "numpy", "image": {"source": "x", "bytes": len(image)},
              "requests_per_level": 9, "clients": [1, 3], "host": {"cpus": 2},
              "servers": {"mvu": {"start_s": 0.5, **result}, "triton": {"error": "exited with status 1\ntrace"}}}
    table = format_table(report)
    assert "triton: FAILED: exited with status 1" in table and len(table.splitlines()) == 7


def test_triton_callable_returns_all_scores_and_its_time():
    from types import SimpleNamespace

    from mvu.host.tools.triton_baseline import make_infer_callable

    class FakeClassifier:
        def classify(self, data, *, top):
            scores = [len(data) / 10, 1 - len(data) / 10, 0.0]
            return SimpleNamespace(top=sorted(({"class": i, "score": s} for i, s in enumerate(scores)),
                                              key=lambda e: -e["score"])[:top])

    outputs = make_infer_callable(FakeClassifier())(np.array([[b"ab"], [b"abcdefgh"]], dtype=object))
    np.testing.assert_allclose(outputs["scores"], [[0.2, 0.8, 0.0], [0.8, 0.2, 0.0]], rtol=1e-6)
    assert outputs["scores"].dtype == np.float32 and outputs["executor_ms"].shape == (2, 1)
    assert np.all(outputs["executor_ms"] >= 0) and outputs["executor_ms"][0, 0] == outputs["executor_ms"][1, 0]
