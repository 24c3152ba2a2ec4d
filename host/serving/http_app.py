"""The HTTP transport: the protocols' routes (Open Inference Protocol v2, TensorFlow Serving REST, raw image
scoring) and /metrics on one Starlette application, every request answered through the :class:`Envelope`.

An error is a JSON body ``{"error": ...}`` with its status (401s with ``WWW-Authenticate``); unknown paths and
wrong methods get the same form.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mvu.host.serving.api_keys import ApiKeys
from mvu.host.serving.envelope import Call, Endpoint, Envelope
from mvu.host.serving.errors import ServingError
from mvu.host.serving.http_io import BodyReader, HttpRoute, json_response
from mvu.host.serving.metrics import CONTENT_TYPE_LATEST, ServingMetrics
from mvu.host.serving.oip_http import OipHttp
from mvu.host.serving.repository import ModelRepository
from mvu.host.serving.score_http import ScoreHttp
from mvu.host.serving.tfserving_http import TfServingHttp

__all__ = ["HttpSettings", "HttpFrontEnd", "create_http_app"]


@dataclass
class HttpSettings:
    keys: ApiKeys | None = None
    open_health: bool = False
    open_metrics: bool = False
    max_request_bytes: int = 64 << 20
    body_timeout: float = 30.0  # seconds for a whole request body to arrive


class _Prometheus:
    """``GET /metrics``."""

    protocol = "metrics"

    def __init__(self, metrics: ServingMetrics, open_access: bool):
        self.metrics, self.open_access = metrics, open_access

    def routes(self) -> list[HttpRoute]:
        return [HttpRoute("/metrics", Endpoint("metrics", self.exposition, self.open_access))]

    async def exposition(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


class HttpFrontEnd:
    """Every protocol's routes over one :class:`ModelRepository`; the envelope's HTTP transport."""

    def __init__(self, repository: ModelRepository, settings: HttpSettings):
        self.envelope = Envelope(repository, settings.keys, self)
        read_body = BodyReader(settings.max_request_bytes, settings.body_timeout)
        self.protocols = [OipHttp(repository, read_body, settings.open_health),
                          _Prometheus(repository.metrics, settings.open_metrics),
                          ScoreHttp(repository, read_body), TfServingHttp(repository, read_body)]

    def error_response(self, error: ServingError) -> Response:
        headers = {"WWW-Authenticate": 'Bearer realm="mvu"'} if error.status == 401 else None
        return json_response({"error": error.message}, error.status, headers)

    def log_fields(self, response: Response, error: ServingError | None) -> dict:
        return {"status": response.status_code, "bytes_out": len(response.body)}

    def routes(self) -> list[Route]:
        return [self._route(protocol.protocol, route) for protocol in self.protocols for route in protocol.routes()]

    def _route(self, protocol: str, route: HttpRoute) -> Route:
        async def serve(request: Request) -> Response:
            client, path = request.client, request.url.path
            call = Call(protocol, route.endpoint, f"{request.method} {path}",
                        f"{client.host}:{client.port}" if client else None, request.headers.get("authorization"),
                        model=request.path_params.get("name"), log={"method": request.method, "path": path})
            return await self.envelope.answer(call, lambda: route.endpoint.handler(request))

        return Route(route.path, serve, methods=list(route.methods))


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    message = {404: f"no such endpoint: {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}
    return JSONResponse({"error": message.get(status, "bad request")}, status)


def create_http_app(repository: ModelRepository, settings: HttpSettings) -> Starlette:
    """The ASGI application."""
    return Starlette(routes=HttpFrontEnd(repository, settings).routes(),
                     exception_handlers={404: _not_found, 405: _not_found})
