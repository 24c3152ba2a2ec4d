"""The envelope around every request, whichever transport brought it: the API key, the handler, a
:class:`ServingError` or an unexpected failure as the protocol's status, metrics and one access-log line.

HTTP (:mod:`.http_app`) and gRPC (:mod:`.grpc_server`) only adapt it to their frameworks: each describes a
request as a :class:`Call` and says, as a :class:`Transport`, how its protocol answers an error.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generic, Protocol, TypeVar

from mvu.host.serving.api_keys import ApiKeys
from mvu.host.serving.errors import ServingError
from mvu.host.serving.repository import ModelRepository

__all__ = ["Call", "Endpoint", "Envelope", "Transport"]

access_log = logging.getLogger("mvu.access")
log = logging.getLogger("mvu.host.serving")

Response = TypeVar("Response")
Handler = TypeVar("Handler")


@dataclass(frozen=True)
class Endpoint(Generic[Handler]):
    """A protocol's handler with its label in metrics and the access log (the same on every transport)."""

    label: str
    handler: Handler
    open_access: bool = False  # answers without an API key


@dataclass
class Call:
    """One request, as its transport describes it to the envelope."""

    protocol: str  # the metrics' protocol label: v2, v1, score, metrics (HTTP) or grpc
    endpoint: Endpoint
    name: str  # how the server's log names the request
    client: str | None
    authorization: str | None  # the credentials sent, if any
    model: str | None = None  # the model it names; a handler may set it once it has parsed the request
    internal_error: str = "internal server error"  # what the client is told of an unexpected failure
    log: dict = field(default_factory=dict)  # the transport's own access-log fields
    started: float = field(default_factory=time.perf_counter)


class Transport(Protocol[Response]):
    """How one transport answers."""

    def error_response(self, error: ServingError) -> Response:
        """The protocol's answer to ``error``."""

    def log_fields(self, response: Response, error: ServingError | None) -> dict:
        """The access log's status (and size) of an answer."""


class Envelope(Generic[Response]):
    """Answers calls on one transport for one :class:`ModelRepository`."""

    def __init__(self, repository: ModelRepository, keys: ApiKeys | None, transport: Transport[Response]):
        self.repository, self.keys, self.transport = repository, keys, transport

    async def answer(self, call: Call, handler: Callable[[], Awaitable[Response]]) -> Response:
        """Check the key and run ``handler``; whatever happens, count the call and log it."""
        error = None
        try:
            if self.keys is not None and not call.endpoint.open_access:
                self.keys.check(call.authorization)
            response = await handler()
        except ServingError as failure:  # a copy without traceback or context: see _detached
            error = _detached(failure)
        except Exception:  # noqa: BLE001 - the client gets a status without internals, the log the trace
            log.exception("%s failed", call.name)
            error = ServingError(500, call.internal_error)
        if error is not None:
            response = self.transport.error_response(error)
        self._record(call, response, error)
        return response

    def _record(self, call: Call, response: Response, error: ServingError | None) -> None:
        status = str(error.status if error else 200)  # HTTP-style on every transport
        self.repository.metrics.requests.labels(call.protocol, call.endpoint.label, status).inc()
        if error and call.model in self.repository:  # never a label per name a client makes up
            self.repository.metrics.failures.labels(call.model, status).inc()
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "client": call.client, **call.log,
                **self.transport.log_fields(response, error), "ms": round((time.perf_counter() - call.started) * 1e3, 3),
                "protocol": call.protocol, "endpoint": call.endpoint.label, "model": call.model or None}))


def _detached(error: ServingError) -> ServingError:
    """``error`` as a new exception without traceback or chained exceptions. The caught one, kept, would make a
    reference cycle (its traceback holds the frame that holds it) through which the request's body, its images
    and a library exception's frames (a decoder with its image) stay alive until the cyclic garbage collector
    runs: hundreds of MB after a few thousand malformed requests."""
    return ServingError(error.status, error.message)
