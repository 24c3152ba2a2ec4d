"""The HTTP front end: Open Inference Protocol v2, TensorFlow Serving REST, raw image scoring, /metrics.

Every endpoint goes through :meth:`HttpFrontEnd._answer`, which checks the API
key, turns a :class:`ServingError` into a JSON error body with its status, turns
anything unexpected into a 500 without internals, logs one JSON access line and
counts the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mvu.host import __version__
from mvu.host.serving.api_keys import ApiKeys
from mvu.host.serving.errors import ServingError
from mvu.host.serving.metrics import CONTENT_TYPE_LATEST
from mvu.host.serving.oip_http import HEADER_LENGTH, encode_infer_response, parse_infer_request
from mvu.host.serving.repository import ModelRepository
from mvu.host.serving.tensors import server_timing
from mvu.host.serving.tfserving_http import model_metadata, model_status, parse_predict

__all__ = ["HttpSettings", "HttpFrontEnd", "create_http_app"]

access_log = logging.getLogger("mvu.access")
log = logging.getLogger("mvu.host.serving")

EXTENSIONS = ["binary_tensor_data", "classification", "model_repository(read-only)"]


@dataclass
class HttpSettings:
    keys: ApiKeys | None = None
    open_health: bool = False
    open_metrics: bool = False
    max_request_bytes: int = 64 << 20
    body_timeout: float = 30.0  # seconds for a whole request body to arrive


def _json(value, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(value, separators=(",", ":")), status, headers, media_type="application/json")


class HttpFrontEnd:
    """Routes and request handling around one :class:`ModelRepository`."""

    def __init__(self, repository: ModelRepository, settings: HttpSettings):
        self.repository, self.settings, self.metrics = repository, settings, repository.metrics

    # Plumbing -----------------------------------------------------------------

    async def _read_body(self, request: Request) -> bytes:
        """The body, decompressed if sent with Content-Encoding; 413 past the configured limit, 408 when it
        does not arrive in time (a client that stalls mid-body would otherwise hold its buffers forever)."""
        limit = self.settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ServingError(413, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.settings.body_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise ServingError(413, f"request body exceeds the limit of {limit} bytes")
                    chunks.append(chunk)
        except ClientDisconnect:  # nobody reads the answer; counted as a bad request, not logged as a failure
            raise ServingError(400, f"the client disconnected after {size} bytes of the body") from None
        except TimeoutError:
            raise ServingError(408, f"the request body did not arrive within {self.settings.body_timeout:g} s "
                                    f"({size} bytes came)") from None
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "deflate"):
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
            try:
                body = decompressor.decompress(body, limit + 1)
            except zlib.error as error:
                raise ServingError(400, f"body is not valid {encoding} data: {error}") from None
            if len(body) > limit or decompressor.unconsumed_tail:
                raise ServingError(413, f"decompressed request body exceeds the limit of {limit} bytes")
        elif encoding != "identity":
            raise ServingError(415, f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
        return body

    async def _answer(self, request: Request, endpoint: str, protocol: str, handler: Callable[[], Awaitable],
                      open_access: bool = False) -> Response:
        started = time.perf_counter()
        model = request.path_params.get("name")
        try:
            if self.settings.keys is not None and not open_access:
                self.settings.keys.check(request.headers.get("authorization"))
            response = await handler()
        except ServingError as error:
            headers = {"WWW-Authenticate": 'Bearer realm="mvu"'} if error.status == 401 else None
            response = _json({"error": error.message}, error.status, headers)
            if model in self.repository:  # never a label per name a client makes up
                self.metrics.failures.labels(model, str(error.status)).inc()
        except Exception:  # noqa: BLE001 - never a traceback to the client
            log.exception("%s %s failed", request.method, request.url.path)
            response = _json({"error": "internal server error"}, 500)
            if model in self.repository:
                self.metrics.failures.labels(model, "500").inc()
        elapsed = time.perf_counter() - started
        self.metrics.requests.labels(protocol, endpoint, str(response.status_code)).inc()
        if access_log.isEnabledFor(logging.INFO):
            client = request.client
            access_log.info(json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "client": f"{client.host}:{client.port}" if client
                else None, "method": request.method, "path": request.url.path, "status": response.status_code,
                "ms": round(elapsed * 1e3, 3), "bytes_out": len(response.body), "protocol": protocol,
                "endpoint": endpoint, "model": model}))
        return response

    def _route(self, path: str, endpoint: str, protocol: str, handler, methods=("GET",), open_access=False):
        async def serve(request: Request) -> Response:
            return await self._answer(request, endpoint, protocol, lambda: handler(request), open_access)

        return Route(path, serve, methods=list(methods))

    def _model(self, request: Request):
        return self.repository.get(request.path_params["name"], request.path_params.get("version"))

    # Open Inference Protocol ----------------------------------------------------

    async def server_metadata(self, request: Request) -> Response:
        return _json({"name": "mvu", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def ready(self, request: Request) -> Response:
        if not self.repository.ready:
            raise ServingError(503, "not ready: models are still loading")
        return _json({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        model = self._model(request)
        metadata = model.metadata()
        if "version" not in request.path_params:
            metadata["versions"] = [m.version for m in self.repository.versions(model.name)]
        return _json(metadata)

    async def model_ready(self, request: Request) -> Response:
        model = self._model(request)
        if not model.ready:
            raise ServingError(503, f"model {model.name!r} version {model.version} is not ready"
                                    + (f": {model.scheduler.failed}" if model.scheduler.failed else ""))
        return _json({"name": model.name, "version": model.version, "ready": True})

    async def infer(self, request: Request) -> Response:
        model = self._model(request)
        body = await self._read_body(request)
        parsed, binary_default = parse_infer_request(body, request.headers.get(HEADER_LENGTH), model.name,
                                                     model.version)
        result = await model.infer(parsed)
        content, header_length = encode_infer_response(result, parsed, binary_default)
        headers = {"Server-Timing": result.server_timing()}
        if header_length is None:
            return Response(content, 200, headers, media_type="application/json")
        headers[HEADER_LENGTH] = str(header_length)
        return Response(content, 200, headers, media_type="application/octet-stream")

    async def repository_index(self, request: Request) -> Response:
        return _json([{"name": m.name, "version": m.version, "state": "READY" if m.ready else "UNAVAILABLE"}
                      for m in self.repository])

    # TensorFlow Serving ---------------------------------------------------------

    async def tf_status(self, request: Request) -> Response:
        models = self.repository.versions(request.path_params["name"])
        version = request.path_params.get("version")
        if version is not None:
            models = [self._model(request)]
        return _json(model_status(models))

    async def tf_metadata(self, request: Request) -> Response:
        return _json(model_metadata(self._model(request)))

    async def tf_predict(self, request: Request) -> Response:
        model = self._model(request)
        parsed, rows = parse_predict(await self._read_body(request), model.name, model.version)
        result = await model.infer(parsed)
        scores = result.outputs[0].data.tolist()
        return _json({"predictions": scores} if rows else {"outputs": scores},
                     headers={"Server-Timing": result.server_timing()})

    # Raw image scoring ----------------------------------------------------------

    async def score(self, request: Request) -> Response:
        name = request.path_params.get("name")
        model = self._model(request) if name else self.repository.only()
        answer = await model.score_image(await self._read_body(request), _top(request.query_params.get("top", "5")))
        return _json(answer, headers={"Server-Timing": server_timing(answer["timings_ms"])})

    # Metrics --------------------------------------------------------------------

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def routes(self) -> list[Route]:
        health, metrics = self.settings.open_health, self.settings.open_metrics
        v2, v2m, v2mv = "/v2", "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
        routes = [
            self._route(v2, "server_metadata", "v2", self.server_metadata),
            self._route(v2 + "/health/live", "live", "v2", self.live, open_access=health),
            self._route(v2 + "/health/ready", "ready", "v2", self.ready, open_access=health),
            self._route(v2 + "/repository/index", "repository_index", "v2", self.repository_index, ("POST", "GET")),
            self._route("/metrics", "metrics", "metrics", self.prometheus, open_access=metrics),
            self._route("/score", "score", "score", self.score, ("POST",)),
            self._route("/score/{name}", "score", "score", self.score, ("POST",)),
            self._route("/score/{name}/versions/{version}", "score", "score", self.score, ("POST",)),
        ]
        for prefix in (v2m, v2mv):
            routes += [self._route(prefix, "model_metadata", "v2", self.model_metadata),
                       self._route(prefix + "/ready", "model_ready", "v2", self.model_ready),
                       self._route(prefix + "/infer", "infer", "v2", self.infer, ("POST",))]
        for prefix in ("/v1/models/{name}", "/v1/models/{name}/versions/{version}"):
            routes += [self._route(prefix, "tf_status", "v1", self.tf_status),
                       self._route(prefix + "/metadata", "tf_metadata", "v1", self.tf_metadata),
                       self._route(prefix + ":predict", "tf_predict", "v1", self.tf_predict, ("POST",))]
        return routes


def _top(text: str) -> int:
    """The ``top`` query parameter: ASCII digits only (``str.isdigit`` also takes '²', which ``int`` refuses)."""
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ServingError(400, f"top must be a positive integer, not {text[:20]!r}")
    return int(text)


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    message = {404: f"no such endpoint: {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}
    return JSONResponse({"error": message.get(status, "bad request")}, status)


def create_http_app(repository: ModelRepository, settings: HttpSettings) -> Starlette:
    """The ASGI application."""
    return Starlette(routes=HttpFrontEnd(repository, settings).routes(),
                     exception_handlers={404: _not_found, 405: _not_found})
