"""Malformed requests against a real `mvu serve`: a seeded fuzz over HTTP and gRPC, and the bugs it found.

Every answer must be a 4xx with a JSON ``{"error": ...}`` body (gRPC: a client-side status), or a valid 200
where the random request happens to be valid; never a 5xx, a hang, a traceback in the server's log or an
allocation the request's own size does not pay for.
"""

import asyncio
import base64
import gzip
import json
import math
import random
import socket
import struct
import time
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
import urllib3

from mvu.host.serving.errors import ServingError
from mvu.host.serving.oip_http import parse_infer_request
from mvu.host.serving.protos import message_class, message_pool
from mvu.host.serving.repository import ModelRepository, ModelSpec
from mvu.host.serving.served_model import ServingLimits
from mvu.host.serving.tensors import MAX_ELEMENTS, InputTensor, check_shape
from mvu.host.serving.tfserving_grpc import tensor_from_proto

LIMIT = 1_000_000  # --max-request-bytes
BODY_TIMEOUT = 2.0  # --body-timeout, seconds
HEADER_TIMEOUT = 1.0  # --header-timeout, seconds
SEED, HTTP_CASES, GRPC_CASES = 20240611, 300, 300
INFER, PREDICT = "/v2/models/toy/infer", "/v1/models/toy:predict"
GRPC_OK = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED}
#: Peak resident memory the server may reach: a few hundred MB for Python, numpy, gRPC and the model.
PEAK_RSS_BYTES = 1 << 30


@pytest.fixture(scope="module")
def server(start_server, toy_package_path):
    return start_server(toy_package_path, "--max-request-bytes", str(LIMIT), "--body-timeout", str(BODY_TIMEOUT),
                        "--header-timeout", str(HEADER_TIMEOUT), "--access-log", "off")


@pytest.fixture(scope="module")
def http():
    return urllib3.PoolManager(retries=False, timeout=20)


# Generators ---------------------------------------------------------------------------------------------------

SHAPES = [[1], [0], [-1], [1 << 20], [1, 3, 32, 32], [2, 3, 32, 32], [1 << 40], [1 << 31], [1 << 32, 1 << 32],
          [1 << 32, 1 << 32, 0], [(1 << 63) - 1, 0], [1 << 70], [1 << 62, 4], [3, 0, 1 << 62], []]
PROTO_SHAPES = [s for s in SHAPES if all(d < 1 << 63 for d in s)]  # int64 fields
STRINGS = ["", "input", "images", "scores", "FP32", "BYTES", "FP16", "INT64", "BOOL", "FP8", "toy", "\ud800", "é",
           "x" * 300, "1", "-1", "NaN"]
NUMBERS = [0, 1, -1, 3, 1 << 31, (1 << 63) - 1, 1 << 63, 1 << 64, 10 ** 30, -(1 << 63), 0.5, 1e39, -1e308,
           float("nan"), float("inf"), float("-inf"), True, False]
DEEP = "__deep__"  # replaced in the encoded text: json.dumps itself cannot write 5000 levels


def _junk(rng: random.Random, depth: int = 0):
    """A random JSON value biased towards the edge cases of the protocols."""
    kind = rng.randrange(8 if depth < 3 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice(NUMBERS)
    if kind == 2:
        return rng.choice(STRINGS)
    if kind == 3:
        return list(rng.choice(SHAPES)) if rng.random() < 0.9 else DEEP  # a copy: _mutate edits in place
    if kind in (4, 5):
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(STRINGS + ["name", "shape", "datatype", "data", "parameters", "binary_data_size",
                                  "classification", "timeout", "b64", "inputs", "outputs", "instances"]):
            _junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def _mutate(rng: random.Random, value, rounds: int):
    """``value`` (a JSON tree) with ``rounds`` random nodes replaced, removed or added."""
    for _ in range(rounds):
        parent, key, node = None, None, value
        while isinstance(node, (dict, list)) and node and rng.random() < 0.75:
            parent, key = node, rng.choice(list(node) if isinstance(node, dict) else range(len(node)))
            node = node[key]
        action = rng.randrange(3)
        if parent is None:
            value = _junk(rng)
        elif action == 0:
            parent[key] = _junk(rng)
        elif action == 1 and isinstance(parent, dict):
            del parent[key]
        elif isinstance(parent, dict):
            parent[rng.choice(STRINGS)] = _junk(rng)
        else:
            parent.append(_junk(rng))
    return value


def _encode(value) -> bytes:
    text = json.dumps(value)  # NaN and Infinity as JavaScript literals, lone surrogates escaped
    return text.replace(f'"{DEEP}"', "[" * 5000 + "]" * 5000).encode()


def _http_case(rng: random.Random, jpeg: bytes):
    """(method, path, headers, body) of one random request."""
    image = np.zeros((1, 3, 32, 32), np.float32)
    kind = rng.randrange(7)
    headers = {}
    if kind == 0:  # OIP JSON
        base = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32],
                            "data": image.reshape(-1).tolist()}],
                "outputs": [{"name": "scores", "parameters": {"classification": 3}}],
                "parameters": {"timeout": 10_000_000}, "id": "a"}
        method, path, body = "POST", INFER, _encode(_mutate(rng, base, rng.randrange(1, 4)))
    elif kind in (1, 2):  # OIP binary extension: images or a float tensor
        data = struct.pack("<I", len(jpeg)) + jpeg if kind == 1 else image.tobytes()
        name, datatype = ("images", "BYTES") if kind == 1 else ("input", "FP32")
        header = {"inputs": [{"name": name, "datatype": datatype, "shape": [1] if kind == 1 else [1, 3, 32, 32],
                              "parameters": {"binary_data_size": len(data)}}],
                  "outputs": [{"name": "scores", "parameters": {"binary_data": True}}]}
        header = _encode(_mutate(rng, header, rng.randrange(0, 3)))
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))] if rng.random() < 0.5 else data + bytes(rng.randrange(1, 9))
        length = rng.choice([len(header)] * 4 + [0, len(header) - 1, len(header) + 1, -1, 1 << 40, "x", "", " 5"])
        method, path, body = "POST", INFER, header + data
        headers["Inference-Header-Content-Length"] = str(length)
    elif kind == 3:  # TensorFlow Serving REST
        base = rng.choice([{"instances": [{"images": {"b64": base64.b64encode(jpeg).decode()}}]},
                           {"inputs": {"input": image.tolist()}}, {"signature_name": "serving_default",
                                                                   "instances": [{"input": image[0].tolist()}]}])
        method, path, body = "POST", PREDICT, _encode(_mutate(rng, base, rng.randrange(0, 3)))
    elif kind == 4:  # raw image scoring
        body = rng.choice([jpeg, jpeg[:rng.randrange(len(jpeg))], bytes(rng.randrange(64)), b"GIF89a\0\0"])
        top = rng.choice(["1", "5", "0", "1000", "1001", "-1", "abc", "%C2%B2", "9" * 5000, ""])
        method, path = "POST", rng.choice(["/score", "/score/toy", "/score/toy/versions/1", "/score/nope"])
        path += f"?top={top}"
    elif kind == 5:  # metadata and health, with odd names and methods
        name = rng.choice(["toy", "nope", "%F0%9F%98%80", "%FF%FE", "t%00y", "x" * 300])
        version = rng.choice(["", "/versions/1", "/versions/0", "/versions/%00", "/versions/" + "9" * 50])
        path = rng.choice([f"/v2/models/{name}{version}", f"/v2/models/{name}{version}/ready", f"/v1/models/{name}",
                           f"/v1/models/{name}{version}/metadata", "/v2", "/v2/health/live", "/v2/repository/index",
                           "/v2/nothing", f"/v2/models/{name}{version}/infer", "/metrics"])
        method, body = rng.choice(["GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]), b""
    else:  # bodies that only decompression makes large or malformed
        payload = rng.choice([bytes(3 * LIMIT), b"{" * (LIMIT // 2), _encode({"inputs": DEEP}), jpeg])
        encoding = rng.choice(["gzip", "deflate", "br", "GZIP", "gzip, gzip", "identity"])
        body = gzip.compress(payload) if encoding.lower().startswith("gzip") else zlib.compress(payload)
        if rng.random() < 0.3:
            body = body[:rng.randrange(len(body))]
        method, path = "POST", rng.choice([INFER, PREDICT, "/score/toy"])
        headers["Content-Encoding"] = encoding
    if body and rng.random() < 0.2:  # a few flipped bytes: broken UTF-8, JSON, base64, lengths
        body = bytearray(body)
        for _ in range(rng.randrange(1, 6)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        body = bytes(body)
    return method, path, headers, body


def _tensor(rng: random.Random, request):
    tensor = request.inputs.add(name=rng.choice(STRINGS[:10]), datatype=rng.choice(STRINGS[:10]))
    tensor.shape.extend(rng.choice(PROTO_SHAPES))
    field = rng.choice(["bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                        "fp32_contents", "fp64_contents", "bytes_contents", None])
    if field:
        values = {"bool_contents": [True], "bytes_contents": [b"\xff\xd8", b""], "fp32_contents": [0.5, 1e38]}
        getattr(tensor.contents, field).extend(values.get(field, [1, 2, 3])[:rng.randrange(1, 4)])
    return tensor


def _grpc_case(rng: random.Random, jpeg: bytes):
    """(method path, request bytes) of one random gRPC call."""
    inference, prediction = "/inference.GRPCInferenceService/", "/tensorflow.serving.PredictionService/"
    kind = rng.randrange(6)
    if kind == 0:  # not protobuf, or hardly
        method = inference + rng.choice(["ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                         "ModelMetadata", "ModelInfer"])
        if rng.random() < 0.5:
            method = prediction + rng.choice(["Predict", "GetModelMetadata"])
        return method, rng.randbytes(rng.randrange(64))
    if kind in (1, 2):  # ModelInferRequest: random fields, or a valid one with flipped bytes
        request = message_class("inference.ModelInferRequest")(
            model_name=rng.choice(["toy", "toy", "", "nope", "tö"]), model_version=rng.choice(["", "1", "x"]))
        if kind == 1:
            for _ in range(rng.randrange(3)):
                _tensor(rng, request)
            for _ in range(rng.randrange(len(request.inputs) + 2)):
                request.raw_input_contents.append(rng.choice([b"", struct.pack("<I", len(jpeg)) + jpeg,
                                                              bytes(12288), b"\0\0\0", rng.randbytes(16)]))
        else:
            request.inputs.add(name="images", datatype="BYTES", shape=[1])
            request.raw_input_contents.append(struct.pack("<I", len(jpeg)) + jpeg)
        output = request.outputs.add(name=rng.choice(["scores", "x"]))
        choice = rng.choice(["int64_param", "uint64_param", "bool_param", "string_param", None])
        if choice:
            value = {"int64_param": rng.choice([-1, 3, (1 << 63) - 1]), "bool_param": True, "string_param": "3",
                     "uint64_param": rng.choice([0, 5, (1 << 64) - 1])}[choice]
            setattr(output.parameters["classification"], choice, value)
        data = bytearray(request.SerializeToString())
        if kind == 2:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        return inference + "ModelInfer", bytes(data)
    if kind in (3, 4):  # TensorFlow Serving Predict
        request = message_class("tensorflow.serving.PredictRequest")()
        request.model_spec.name = rng.choice(["toy", "toy", "", "nope"])
        request.model_spec.signature_name = rng.choice(["", "serving_default", "other"])
        if rng.random() < 0.2:
            request.model_spec.version.value = rng.choice([1, 2, -1])
        tensor = request.inputs[rng.choice(["images", "input", "other"])]
        dtypes = message_pool().FindEnumTypeByName("tensorflow.DataType").values_by_name
        dtype, content = rng.choice([("DT_FLOAT", "float_val"), ("DT_STRING", "string_val"), ("DT_HALF", "half_val"),
                                     ("DT_INT8", "int_val"), (None, "float_val")])
        tensor.dtype = dtypes[dtype].number if dtype else 9999
        if rng.random() < 0.15:
            tensor.tensor_shape.unknown_rank = True
        for size in rng.choice(PROTO_SHAPES):
            tensor.tensor_shape.dim.add(size=size)
        if rng.random() < 0.4:
            content = rng.choice(["float_val", "string_val", "half_val", "int_val", "tensor_content"])
        values = {"float_val": [1.0], "string_val": [jpeg], "half_val": [15360, 1 << 20], "int_val": [1, 300],
                  "tensor_content": [rng.choice([b"\x01a", bytes(12288), b"\xff" * 9, jpeg])]}[content]
        values = values[:rng.randrange(1, len(values) + 1)]
        if content == "tensor_content":
            tensor.tensor_content = values[0]
        else:
            getattr(tensor, content).extend(values)
        request.output_filter.extend(rng.choice([[], ["output_alias"], ["nope"]]))
        data = bytearray(request.SerializeToString())
        if kind == 4 and data:
            del data[rng.randrange(len(data)):]
        return prediction + "Predict", bytes(data)
    request = message_class("tensorflow.serving.GetModelMetadataRequest")()  # kind 5
    request.model_spec.name = rng.choice(["toy", "", "nope"])
    request.metadata_field.extend(rng.choice([["signature_def"], [], ["x", "signature_def"]]))
    return prediction + "GetModelMetadata", request.SerializeToString()


# Checks -------------------------------------------------------------------------------------------------------


def _check_http(response, case) -> None:
    method, path, _, body = case
    where = (method, path[:80], body[:200])
    asked_for_it = response.status == 504 and b'"timeout"' in body  # Triton's timeout, in microseconds
    assert response.status < 500 or asked_for_it, (where, response.status, response.data[:300])
    if response.status == 200:
        return
    assert response.status >= 400, (where, response.status)
    if method != "HEAD":
        error = json.loads(response.data)["error"]
        assert isinstance(error, str) and error and "Traceback" not in error, (where, error)


def _peak_rss(pid: int) -> int | None:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _assert_healthy(server, http) -> None:
    assert http.request("GET", server.url + "/v2/health/ready").status == 200
    assert "Traceback" not in server.stderr and "RuntimeWarning" not in server.stderr, server.stderr[-3000:]
    peak = _peak_rss(server.process.pid)
    assert peak is None or peak < PEAK_RSS_BYTES, f"the server's memory peaked at {peak >> 20} MiB"


# The fuzz -----------------------------------------------------------------------------------------------------


def test_random_malformed_http_requests_get_4xx_json_errors(server, http, cat_jpeg):
    rng = random.Random(SEED)
    statuses = set()
    for index in range(HTTP_CASES):
        case = _http_case(rng, cat_jpeg)
        method, path, headers, body = case
        response = http.request(method, server.url + path, body=body or None, headers=headers)
        _check_http(response, case)
        statuses.add(response.status)
        if index % 100 == 99:
            _assert_healthy(server, http)
    assert {200, 400, 404, 405, 413, 415} <= statuses  # the generator reaches every kind of answer
    _assert_healthy(server, http)


def test_random_malformed_grpc_calls_get_client_statuses(server, http, cat_jpeg):
    rng = random.Random(SEED)
    codes = set()
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        for index in range(GRPC_CASES):
            method, data = _grpc_case(rng, cat_jpeg)
            try:
                channel.unary_unary(method)(data, timeout=20)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as error:
                code, details = error.code(), error.details()
            assert code in GRPC_OK and "Traceback" not in details, (method, data[:200], code, details)
            codes.add(code)
            if index % 100 == 99:
                _assert_healthy(server, http)
    assert codes >= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    _assert_healthy(server, http)


def _raw_exchange(port: int, data: bytes, close_early: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if close_early:
            return b""
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.endswith((b"}", b".")):
                break
        return answer


def test_broken_framing_is_refused_and_early_disconnects_are_not_failures(server, http):
    head = b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\n"
    for framing in [b"Content-Length: abc\r\n\r\n{}", b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n{}",
                    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", b"Content-Length: -1\r\n\r\n"]:
        assert _raw_exchange(server.http_port, head + framing).startswith(b"HTTP/1.1 400 "), framing
    for _ in range(3):  # the client promises 100 bytes, sends 2 and leaves: once a traceback and a 500
        _raw_exchange(server.http_port, head + b"Content-Length: 100\r\n\r\n{}", close_early=True)
    metrics = http.request("GET", server.url + "/metrics").data.decode()
    assert 'mvu_requests_total{endpoint="infer",protocol="v2",status="500"}' not in metrics
    assert http.request("GET", server.url + "/v2/health/ready").status == 200
    assert "Traceback" not in server.stderr and "ClientDisconnect" not in server.stderr


def test_a_body_that_stalls_gets_408_and_the_server_keeps_serving(server, http):
    """A client promises 100 bytes, sends 2 and waits: it gets a 408 once the body timeout passes."""
    started = time.monotonic()
    answer = _raw_exchange(server.http_port, b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\n"
                                             b"Content-Length: 100\r\n\r\n{}")
    waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"did not arrive within 2 s (2 bytes came)" in answer
    assert BODY_TIMEOUT <= waited < BODY_TIMEOUT + 5
    assert http.request("GET", server.url + "/v2/health/ready").status == 200


def _until_closed(port: int, data: bytes, half_close: bool = False) -> tuple[bytes, float]:
    """Send ``data`` (then, with ``half_close``, the end of the client's side); the answer until the server
    closes the connection, and the seconds that took."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        started, answer = time.monotonic(), b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer, time.monotonic() - started


def _json_answer(answer: bytes, status: int) -> str:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:300]
    return json.loads(body)["error"]


@pytest.mark.parametrize("sent", [b"", b"PO", b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nContent-Le"])
def test_a_connection_that_stalls_before_its_body_is_closed_within_the_header_timeout(server, http, sent):
    answer, waited = _until_closed(server.http_port, sent)
    assert HEADER_TIMEOUT - 0.1 <= waited < HEADER_TIMEOUT + 1.5
    if sent:
        assert _json_answer(answer, 408) == "the request line and headers did not arrive within 1 s"
    else:  # a connection that never said a word gets none
        assert answer == b""
    assert http.request("GET", server.url + "/v2/health/ready").status == 200


def test_a_later_request_on_a_kept_alive_connection_has_the_header_deadline_too(server):
    answer, waited = _until_closed(server.http_port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\nGET /v2")
    assert answer.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in answer
    assert HEADER_TIMEOUT - 0.1 <= waited < HEADER_TIMEOUT + 1.5


def test_endless_headers_are_refused_at_64_kib(server, http):
    answer, _ = _until_closed(server.http_port, b"GET /v2 HTTP/1.1\r\nX-Junk: " + b"a" * 100_000)
    assert _json_answer(answer, 431) == "the request line and headers exceed 65536 bytes"
    metrics = http.request("GET", server.url + "/metrics").data.decode()
    assert 'mvu_requests_total{endpoint="connection",protocol="http",status="431"} 1.0' in metrics


@pytest.mark.parametrize("framing, message", [
    (b"Content-Length: 100\r\n\r\n{}", "after 2 bytes of the request body of the 100 that its Content-Length promised"),
    (b"Transfer-Encoding: chunked\r\n\r\n5\r\nab", "after 2 bytes of the request body"),
    (b"Transfer-Encoding: chunked\r\n\r\n7fffffffffffffff\r\nab", "after 2 bytes of the request body"),
])
def test_a_body_cut_short_by_the_client_gets_a_400(server, http, framing, message):
    answer, _ = _until_closed(server.http_port, b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\n" + framing,
                              half_close=True)
    assert _json_answer(answer, 400) == f"the connection ended {message}"
    assert http.request("GET", server.url + "/v2/health/ready").status == 200


def test_an_absurd_chunk_size_gets_a_json_400_and_a_stalled_chunk_a_408(server):
    head = b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer, _ = _until_closed(server.http_port, head + b"ffffffffffffffffffffff\r\nab")
    assert _json_answer(answer, 400) == "the request is not valid HTTP/1.1: its chunked body cannot be parsed"
    answer, waited = _until_closed(server.http_port, head + b"7fffffffffffffff\r\nab")  # then nothing
    assert "did not arrive within 2 s" in _json_answer(answer, 408)
    assert waited < BODY_TIMEOUT + 1.5  # answered, then closed: the rest of the body is not awaited


def test_a_whole_request_then_a_half_close_is_answered(server):
    answer, _ = _until_closed(server.http_port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", half_close=True)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"live":true}')


def test_a_body_left_unread_may_come_until_the_body_deadline(server):
    """An answer that did not need the body (an unknown model) comes at once; the connection then waits for the
    rest of the body until the body deadline, not forever."""
    answer, waited = _until_closed(server.http_port, b"POST /v2/models/nope/infer HTTP/1.1\r\nHost: x\r\n"
                                                     b"Content-Length: 1000\r\n\r\n{")
    assert "unknown model 'nope'" in _json_answer(answer, 404)
    assert BODY_TIMEOUT - 0.2 <= waited < BODY_TIMEOUT + 1.5


# Regressions --------------------------------------------------------------------------------------------------


def _post(http, server, path, body, headers=None):
    response = http.request("POST", server.url + path, body=body, headers=headers or {})
    return response.status, json.loads(response.data).get("error")


def _binary(header: dict, data: bytes) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    return text + data, {"Inference-Header-Content-Length": str(len(text))}


@pytest.mark.parametrize("shape", [[1 << 32, 1 << 32], [1 << 70], [1 << 70, 0], [1 << 62, 4], [(1 << 63) - 1, 0]])
def test_shapes_whose_size_overflows_int64_are_400s(server, http, shape):
    """Once: int64 wrap-around made [2**32, 2**32] look like 0 elements, then numpy failed: 500."""
    status, error = _post(http, server, INFER, json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": []}]}))
    assert status == 400 and "is too large" in error
    body, headers = _binary({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape,
                                         "parameters": {"binary_data_size": 0}}]}, b"")
    assert _post(http, server, INFER, body, headers)[0] == 400


def test_a_bytes_shape_claiming_billions_of_elements_allocates_nothing(server, http):
    """Once: np.empty(2**31, object) before decoding, 16 GiB and a blocked event loop for one 4-byte element."""
    body, headers = _binary({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1 << 31],
                                         "parameters": {"binary_data_size": 4}}]}, b"\0\0\0\0")
    status, error = _post(http, server, INFER, body, headers)
    assert status == 400 and error == "input 'images': 1 BYTES elements for a shape of 2147483648 elements"
    _assert_healthy(server, http)


def test_one_typed_value_cannot_fill_a_huge_tensorflow_shape():
    """Once: `[value] * count` built a list of 2**30 entries (8 GiB) before the shape was checked."""
    proto = message_class("tensorflow.TensorProto")(dtype=1, float_val=[1.0])  # DT_FLOAT
    proto.tensor_shape.dim.add(size=1 << 30)
    with pytest.raises(ServingError, match=r"one float_val value filling shape \[1073741824\] makes 4294967296 "
                                           r"bytes, more than the request limit of 1000000") as caught:
        tensor_from_proto("input", proto, max_bytes=LIMIT)
    assert caught.value.status == 413
    proto.tensor_shape.dim[0].size = 1 << 40
    with pytest.raises(ServingError, match="is too large"):
        tensor_from_proto("input", proto)


@pytest.mark.parametrize("body, message", [
    ('{"inputs": ' + "[" * 5000 + "]" * 5000 + "}", "the inference request is nested too deeply"),
    ('{"inputs": [{"name": "input", "datatype": "INT64", "shape": [1], "data": [' + "9" * 5000 + "]}]}",
     "the inference request has an integer of more than 4300 digits"),
    ('{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["\\udc80"]}]}',
     "input 'images': BYTES data must be valid Unicode (no lone surrogates)"),
    ('{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1e39]}]}',
     "input 'input': data is not FP32: a value is out of its range"),
    ('{"parameters": {"timeout": ' + "9" * 400 + '}, "inputs": []}',
     "request: parameter 'timeout' must be a positive 64-bit integer (microseconds)"),
])
def test_json_the_parser_chokes_on_is_a_400(server, http, body, message):
    """Once: RecursionError, ValueError (int digits), UnicodeEncodeError, OverflowError: each a 500."""
    assert _post(http, server, INFER, body) == (400, message)


def test_tensorflow_rest_nesting_and_overflow_are_400s(server, http):
    assert _post(http, server, PREDICT, '{"instances": [' + "[" * 5000 + "]" * 5000 + "]}") == \
        (400, "the predict request is nested too deeply")
    status, error = _post(http, server, PREDICT, '{"instances": [{"input": [1e39]}]}')
    assert (status, error) == (400, "instances: not an array of FP32 numbers: a value is out of its range")
    assert "RuntimeWarning" not in server.stderr


@pytest.mark.parametrize("top", ["%C2%B2", "9" * 5000, "%D9%A1"])
def test_top_must_be_ascii_digits(server, http, cat_jpeg, top):
    """Once: '²'.isdigit() is True but int('²') fails, and int() of 5000 digits too: 500s."""
    status, error = _post(http, server, f"/score/toy?top={top}", cat_jpeg)
    assert status == 400 and error.startswith("top must be a positive integer")


def test_a_request_timeout_can_only_shorten_the_servers(toy_package_path, monkeypatch):
    """Triton's `timeout` parameter once replaced --timeout, so a client could hold a queue slot for years."""
    repository = ModelRepository(limits=ServingLimits(timeout=2.0))
    model = repository.add(ModelSpec(toy_package_path))
    waited = []

    async def submit(images, timeout, arrival=None):
        waited.append(timeout)
        raise ServingError(504, "stand-in")

    monkeypatch.setattr(model.scheduler, "submit", submit)
    try:
        for asked in (1e13, 0.5, None):
            request, _ = parse_infer_request(json.dumps({
                "parameters": {} if asked is None else {"timeout": int(asked * 1e6)},
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3072}]
            }).encode(), None, "toy", None)
            with pytest.raises(ServingError):
                asyncio.run(model.infer(request))
    finally:
        repository.close()
    assert waited == [2.0, 0.5, 2.0]


def test_huge_finite_inputs_saturate_without_warnings(server, http):
    """A preprocessed tensor of 3e38s once printed numpy's overflow RuntimeWarning into the server log."""
    body, headers = _binary({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                         "parameters": {"binary_data_size": 12288}}]},
                            np.full(3072, 3e38, np.float32).tobytes())
    assert http.request("POST", server.url + INFER, body=body, headers=headers).status == 200
    assert "RuntimeWarning" not in server.stderr


def test_unknown_model_names_do_not_become_metric_labels(server, http):
    """Once: every made-up model name in a URL or a gRPC request added a Prometheus series, without bound."""
    for index in range(5):
        assert http.request("GET", f"{server.url}/v2/models/made-up-{index}").status == 404
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        request = message_class("inference.ModelMetadataRequest")(name="made-up-grpc")
        with pytest.raises(grpc.RpcError):
            channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata")(request.SerializeToString())
    metrics = http.request("GET", server.url + "/metrics").data.decode()
    assert "made-up" not in metrics
    assert http.request("GET", server.url + "/v2/models/toy/versions/9").status == 404
    assert 'mvu_request_failures_total{model="toy",status="404"}' in \
        http.request("GET", server.url + "/metrics").data.decode()


def test_tensor_helpers_check_sizes_before_allocating():
    assert check_shape("x", [0, MAX_ELEMENTS]) == (0, MAX_ELEMENTS)
    with pytest.raises(ServingError, match="is too large"):
        check_shape("x", [MAX_ELEMENTS, 2, 0])
    tensor = InputTensor.from_values("s", "BYTES", [2, 1], [["a"], [b"b"]])
    assert tensor.data.tolist() == [[b"a"], [b"b"]]
    deep = ["z"]
    for _ in range(5000):
        deep = [deep]
    assert InputTensor.from_values("s", "BYTES", [1], deep).data.tolist() == [b"z"]
    with pytest.raises(ServingError, match="is too large"):
        InputTensor.from_buffer("x", "FP32", [1 << 62, 4], bytes(8))
    assert math.prod(InputTensor.from_buffer("x", "FP16", [2, 0, 3], b"").shape) == 0
