"""A client for `mvu serve`: raw image scoring and the Open Inference Protocol v2 over HTTP(S).

>>> client = ScoringClient("http://127.0.0.1:8000", key=os.environ.get("MVU_API_KEY"))
>>> client.score_image("cat.jpg", top=3)["top"][0]["label"]
>>> client.predict(batch, model="efficientnet-lite0")          # FP32 [N, 3, H, W] -> scores [N, classes]
>>> client.infer_images([jpeg_bytes], model="efficientnet-lite0")

Requests are retried, with exponential backoff and jitter, on connection errors
and on 502, 503 and 504 only (a ``Retry-After`` header is honoured, up to 10 s);
any other error status raises :class:`ScoringError` at once with the server's
message. The ``Server-Timing`` header of the last response (per thread) is in
:attr:`ScoringClient.last_timing`, in milliseconds.

The tensor helpers (:func:`encode_infer_request`, :func:`decode_infer_response`,
:func:`parse_server_timing`) are public for the load
generator and for tests.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import urllib3

from mvu.host.serving.oip_http import HEADER_LENGTH
from mvu.host.serving.tensors import DATATYPES, encode_bytes_elements, split_bytes_elements

__all__ = [
    "RETRY_STATUSES",
    "ScoringClient",
    "ScoringError",
    "decode_infer_response",
    "encode_infer_request",
    "parse_server_timing",
]

#: Statuses worth another try: the server (or a proxy) is busy, restarting or timed out.
RETRY_STATUSES = frozenset({502, 503, 504})

#: Open Inference Protocol datatypes as little-endian numpy dtypes (the wire's byte order).
_DTYPES: dict[str, np.dtype] = {name: dtype.newbyteorder("<") for name, dtype in DATATYPES.items()
                                if name != "BYTES"}
_MAX_RETRY_AFTER = 10.0


class ScoringError(Exception):
    """A request failed. ``status``: the HTTP status, or None when no response came (connection, timeout)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status is not None else message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- wire format


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``"queue;dur=0.1, executor;dur=12.5"`` -> ``{"queue": 0.1, "executor": 12.5}`` (ms); entries without dur are left out."""
    timings: dict[str, float] = {}
    for entry in (header or "").split(","):
        name, *params = [part.strip() for part in entry.split(";")]
        if not name:
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "dur":
                try:
                    timings[name] = float(value.strip().strip('"'))
                except ValueError:
                    pass
                break
    return timings


def _raw_tensor(name: str, value: Any) -> tuple[dict, bytes]:
    """The JSON description and the raw bytes of one input tensor."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bytes, bytearray, memoryview)) for v in value):
        raw, shape, datatype = encode_bytes_elements(value), [len(value)], "BYTES"
    else:
        array = np.asarray(value)
        if array.dtype.kind in "SOU":
            items = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
            raw, shape, datatype = encode_bytes_elements(items), list(array.shape), "BYTES"
        else:
            datatype = next((k for k, d in _DTYPES.items() if d == array.dtype.newbyteorder("<")), None)
            if datatype is None:
                raise TypeError(f"input {name!r}: no Open Inference Protocol datatype for {array.dtype}")
            raw, shape = np.ascontiguousarray(array, _DTYPES[datatype]).tobytes(), list(array.shape)
    return {"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}, raw


def encode_infer_request(inputs: Mapping[str, Any], outputs: Sequence[str] = (),
                         parameters: Mapping[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a binary-extension infer request.

    ``inputs``: name -> numpy array (FP32, INT64, ...) or list of ``bytes`` (a BYTES tensor of shape [N]).
    ``outputs``: names to ask for as binary data (empty: whatever the server returns).
    """
    described, chunks = [], []
    for name, value in inputs.items():
        description, raw = _raw_tensor(name, value)
        described.append(description)
        chunks.append(raw)
    header: dict[str, Any] = {"inputs": described}
    if outputs:
        header["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    if parameters:
        header["parameters"] = dict(parameters)
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + b"".join(chunks), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def _tensor_from_output(output: Mapping[str, Any], raw: memoryview | None) -> np.ndarray:
    datatype, shape = output.get("datatype"), [int(d) for d in output.get("shape", [])]
    if raw is not None:
        if datatype == "BYTES":
            return np.array(split_bytes_elements(raw), dtype=object).reshape(shape)
        if datatype not in _DTYPES:
            raise ValueError(f"output {output.get('name')!r}: unknown datatype {datatype!r}")
        return np.frombuffer(raw, _DTYPES[datatype]).reshape(shape).copy()
    data = output.get("data")
    if data is None:
        raise ValueError(f"output {output.get('name')!r} has neither data nor binary_data_size")
    if datatype == "BYTES":
        items = [d.encode() if isinstance(d, str) else d for d in np.ravel(np.array(data, dtype=object))]
        return np.array(items, dtype=object).reshape(shape)
    return np.asarray(data, _DTYPES.get(datatype, np.dtype(np.float64))).reshape(shape)


def decode_infer_response(body: bytes, header_length: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON header and the output arrays (by name) of an infer response, binary or JSON."""
    view = memoryview(body)
    if header_length is None:
        header, rest = json.loads(bytes(view)), view[len(view):]
    else:
        if not 0 <= header_length <= len(view):
            raise ValueError(f"{HEADER_LENGTH} {header_length} but the body has {len(view)} bytes")
        header, rest = json.loads(bytes(view[:header_length])), view[header_length:]
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for output in header.get("outputs", []):
        size = (output.get("parameters") or {}).get("binary_data_size")
        raw = None
        if size is not None:
            if offset + int(size) > len(rest):
                raise ValueError(f"output {output.get('name')!r}: binary data cut short")
            raw, offset = rest[offset:offset + int(size)], offset + int(size)
        arrays[output["name"]] = _tensor_from_output(output, raw)
    return header, arrays


def _error_message(response: urllib3.BaseHTTPResponse) -> str:
    text = response.data.decode("utf-8", "replace")
    try:
        body = json.loads(text)
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body["error"]
    except ValueError:
        pass
    text = " ".join(text.split())
    return text[:300] if text else (response.reason or "no message")


def _content_type(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return "application/octet-stream"


def _quote(part: str) -> str:
    return urllib.parse.quote(str(part), safe="")


# --------------------------------------------------------------------------- client


class ScoringClient:
    """HTTP(S) client of one `mvu serve` (or any KServe v2 server), safe to share between threads.

    ``key``: the API key, sent as ``Authorization: Bearer <key>``. ``cacert``: a PEM CA
    bundle to verify an https server with (a self-signed server's certificate); without it
    the system's CAs. ``timeout``: seconds per attempt. ``retries``: further attempts after
    a connection error or a 502/503/504; ``backoff``: the first wait in seconds, doubled
    each time, with jitter. ``pool_size``: keep-alive connections kept to the server.
    """

    def __init__(self, url: str, *, key: str | None = None, cacert: str | Path | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.2, pool_size: int = 4) -> None:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) server URL: {url!r}")
        self.url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))
        self.timeout, self.retries, self.backoff = float(timeout), max(0, int(retries)), float(backoff)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        options: dict[str, Any] = {"maxsize": pool_size, "block": False,
                                   "timeout": urllib3.Timeout(total=self.timeout), "retries": False}
        if parsed.scheme == "https":
            options["cert_reqs"] = "CERT_REQUIRED"
            if cacert:
                options["ca_certs"] = str(cacert)
        self._pool = urllib3.PoolManager(num_pools=2, **options)
        self._local = threading.local()

    def __repr__(self) -> str:  # never shows the key
        return f"ScoringClient({self.url!r}, key={'***' if self._headers else None})"

    def close(self) -> None:
        """Close the kept-alive connections."""
        self._pool.clear()

    def __enter__(self) -> "ScoringClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def last_timing(self) -> dict[str, float]:
        """This thread's last response's ``Server-Timing`` in ms (``queue``, ``preprocess``, ``executor``, ``total``)."""
        return getattr(self._local, "timing", {})

    @property
    def last_attempts(self) -> int:
        """How many attempts this thread's last request took."""
        return getattr(self._local, "attempts", 0)

    # ------------------------------------------------------------------ transport

    def request(self, method: str, path: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None,
                fields: Mapping[str, str] | None = None, retries: int | None = None) -> urllib3.BaseHTTPResponse:
        """One request with retries; a response of status >= 400 raises :class:`ScoringError`."""
        url = self.url + path
        if fields:
            url += "?" + urllib.parse.urlencode(fields)
        all_headers = {**self._headers, **(headers or {})}
        attempts = 1 + (self.retries if retries is None else max(0, retries))
        for attempt in range(attempts):
            self._local.attempts = attempt + 1
            wait: float | None = None
            try:
                response = self._pool.request(method, url, body=body, headers=all_headers, redirect=False)
            except urllib3.exceptions.ReadTimeoutError:
                raise ScoringError(None, f"no answer from {self.url} within {self.timeout:g} s") from None
            except urllib3.exceptions.SSLError as error:  # a certificate problem does not go away
                raise ScoringError(None, f"TLS with {self.url} failed: {_reason(error)}") from None
            except urllib3.exceptions.HTTPError as error:
                if attempt + 1 >= attempts:
                    raise ScoringError(None, f"cannot reach {self.url}: {_reason(error)}") from None
            else:
                self._local.timing = parse_server_timing(response.headers.get("Server-Timing"))
                if response.status < 400:
                    return response
                if response.status not in RETRY_STATUSES or attempt + 1 >= attempts:
                    raise ScoringError(response.status, _error_message(response))
                wait = _retry_after(response.headers.get("Retry-After"))
            if wait is None:
                wait = self.backoff * (2 ** attempt) * random.uniform(0.5, 1.5)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kwargs: Any) -> dict:
        response = self.request(method, path, **kwargs)
        try:
            return json.loads(response.data)
        except ValueError:
            raise ScoringError(response.status, f"the server's answer to {path} is not JSON") from None

    @staticmethod
    def _model_path(model: str, version: str | int | None) -> str:
        path = f"/v2/models/{_quote(model)}"
        return path + (f"/versions/{_quote(str(version))}" if version is not None else "")

    # ------------------------------------------------------------------ API

    def score_image(self, image: str | Path | bytes, top: int = 5, model: str | None = None,
                    version: str | int | None = None) -> dict:
        """Classify one encoded image (a path or bytes) with POST /score; the server's JSON answer.

        Keys: ``model_name``, ``model_version``, ``top`` (``class``, ``label``, ``score``), ``cycles``,
        ``modelled_ms``, ``timings_ms``.
        """
        data = bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else Path(image).read_bytes()
        if version is not None and model is None:
            raise ValueError("a version needs a model name")
        path = "/score" if model is None else f"/score/{_quote(model)}"
        if version is not None:
            path += f"/versions/{_quote(str(version))}"
        return self._json("POST", path, body=data, headers={"Content-Type": _content_type(data)},
                          fields={"top": str(int(top))})

    def infer(self, model: str, inputs: Mapping[str, Any], outputs: Sequence[str] = (),
              version: str | int | None = None) -> dict[str, np.ndarray]:
        """An Open Inference Protocol infer request with binary tensors both ways; outputs by name."""
        body, headers = encode_infer_request(inputs, outputs)
        response = self.request("POST", self._model_path(model, version) + "/infer", body=body, headers=headers)
        length = response.headers.get(HEADER_LENGTH)
        try:
            _, arrays = decode_infer_response(response.data, int(length) if length is not None else None)
        except (ValueError, KeyError, TypeError) as error:
            raise ScoringError(response.status, f"malformed infer response: {error}") from None
        missing = [name for name in outputs if name not in arrays]
        if missing:
            raise ScoringError(response.status, f"the response lacks output {missing[0]!r}")
        return arrays

    def predict(self, array: np.ndarray, model: str, version: str | int | None = None,
                output: str = "scores") -> np.ndarray:
        """Scores of preprocessed images: ``array`` FP32 [N, 3, H, W] as input ``input``; returns ``output``."""
        array = np.asarray(array, np.float32)
        return self.infer(model, {"input": array}, [output], version)[output]

    def infer_images(self, images: Sequence[bytes], model: str, version: str | int | None = None,
                     output: str = "scores") -> np.ndarray:
        """Scores [N, classes] of encoded images sent as the BYTES input ``images`` (shape [N])."""
        return self.infer(model, {"images": [bytes(image) for image in images]}, [output], version)[output]

    def server_metadata(self) -> dict:
        """GET /v2: ``name``, ``version``, ``extensions``."""
        return self._json("GET", "/v2")

    def model_metadata(self, model: str, version: str | int | None = None) -> dict:
        """GET /v2/models/{model}[/versions/{version}]: ``name``, ``versions``, ``platform``, ``inputs``, ``outputs``."""
        return self._json("GET", self._model_path(model, version))

    def is_live(self) -> bool:
        """GET /v2/health/live answers 200 (False when the server cannot be reached; 401 raises)."""
        return self._health("/v2/health/live")

    def is_ready(self, model: str | None = None, version: str | int | None = None) -> bool:
        """The server (or one model) is ready: GET /v2/health/ready or /v2/models/{m}[/versions/{v}]/ready."""
        return self._health("/v2/health/ready" if model is None else self._model_path(model, version) + "/ready")

    def _health(self, path: str) -> bool:
        try:
            self.request("GET", path, retries=0)
        except ScoringError as error:
            if error.status in (401, 403):
                raise
            return False
        return True


def _retry_after(value: str | None) -> float | None:
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER) if value else None
    except ValueError:
        return None  # an HTTP date: use the backoff


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None) or error
    text = str(reason)
    # urllib3 prefixes messages with the connection object's repr: keep the readable tail
    if "): " in text:
        text = text.split("): ", 1)[1]
    return text.rstrip(")") if text.count(")") > text.count("(") else text
