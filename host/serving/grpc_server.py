"""The gRPC transport: the Open Inference Protocol's and TensorFlow Serving's services on one ``grpc.aio``
server, every call answered through the :class:`Envelope`.

Messages come from :mod:`.protos` (a private descriptor pool, no generated stubs). Each call parses its own
request, so malformed bytes end as a status like every other failure: the client gets the code and a message,
never a traceback; the server log has the details.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message

from mvu.host.serving.api_keys import ApiKeys
from mvu.host.serving.envelope import Call, Endpoint, Envelope
from mvu.host.serving.errors import ServingError
from mvu.host.serving.oip_grpc import OipGrpc
from mvu.host.serving.protos import message_class, service
from mvu.host.serving.repository import ModelRepository
from mvu.host.serving.tfserving_grpc import MAX_MESSAGE_BYTES, TfServingGrpc

__all__ = ["GrpcFrontEnd", "GrpcHandler", "GrpcSettings", "create_grpc_server"]

GrpcHandler = Callable[[Message, grpc.aio.ServicerContext], Awaitable[Message]]


@dataclass
class GrpcSettings:
    """How the gRPC server listens and whom it answers."""

    host: str = "127.0.0.1"
    port: int = 8001  # 0: any free port
    tls_cert: Path | None = None  # PEM chain; with tls_key: TLS only
    tls_key: Path | None = None
    keys: ApiKeys | None = None  # checks the `authorization` metadata; None: no API keys
    open_health: bool = False  # ServerLive and ServerReady need no key
    max_message_bytes: int = MAX_MESSAGE_BYTES  # larger requests get RESOURCE_EXHAUSTED; bounds a filled shape too
    reuse_port: bool = False  # let other processes (replicas) bind the same port; else a taken port is an error


def _model_name(request: Message) -> str:
    """The model a request names, whichever field it uses."""
    fields = request.DESCRIPTOR.fields_by_name
    if "model_spec" in fields:
        return request.model_spec.name
    return next((getattr(request, f) for f in ("model_name", "name") if f in fields), "")


class GrpcFrontEnd:
    """Both services over one :class:`ModelRepository`; the envelope's gRPC transport, whose answer to an
    error is the error itself, sent as the call's status."""

    def __init__(self, repository: ModelRepository, settings: GrpcSettings):
        self.envelope = Envelope(repository, settings.keys, self)
        self.services = [OipGrpc(repository, settings.open_health),
                         TfServingGrpc(repository, settings.max_message_bytes)]

    def error_response(self, error: ServingError) -> ServingError:
        return error

    def log_fields(self, response: Message | ServingError, error: ServingError | None) -> dict:
        return {"status": error.grpc_code if error else "OK"}

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """Generic handlers for every service, built from the service descriptors."""
        generic = []
        for implementation in self.services:
            descriptors = service(implementation.service).methods_by_name
            generic.append(grpc.method_handlers_generic_handler(implementation.service, {
                method: self._rpc(descriptors[method], endpoint)
                for method, endpoint in implementation.methods().items()}))
        return generic

    def _rpc(self, method: MethodDescriptor, endpoint: Endpoint[GrpcHandler]) -> grpc.RpcMethodHandler:
        request_class = message_class(method.input_type.full_name)
        path = f"/{method.containing_service.full_name}/{method.name}"

        async def rpc(raw: bytes, context: grpc.aio.ServicerContext) -> Message:
            call = Call("grpc", endpoint, f"gRPC {path}", context.peer(),
                        dict(context.invocation_metadata() or ()).get("authorization"),
                        internal_error=f"{method.name} failed on the server; see its log",
                        log={"method": path, "bytes_in": len(raw)})

            async def handle() -> Message:
                try:
                    request = request_class.FromString(raw)
                except DecodeError:
                    raise ServingError(400, f"malformed {request_class.DESCRIPTOR.name}: the request is not a "
                                            f"valid {request_class.DESCRIPTOR.full_name} message") from None
                call.model = _model_name(request)
                return await endpoint.handler(request, context)

            answer = await self.envelope.answer(call, handle)
            if isinstance(answer, ServingError):
                await context.abort(getattr(grpc.StatusCode, answer.grpc_code), answer.message)
            return answer

        return grpc.unary_unary_rpc_method_handler(
            rpc, response_serializer=message_class(method.output_type.full_name).SerializeToString)


def create_grpc_server(repository: ModelRepository, settings: GrpcSettings) -> tuple[grpc.aio.Server, int]:
    """A ``grpc.aio`` server (not started) with both services, and the port it is bound to."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", settings.max_message_bytes),
                                      ("grpc.max_send_message_length", -1),
                                      ("grpc.so_reuseport", int(settings.reuse_port))])
    server.add_generic_rpc_handlers(GrpcFrontEnd(repository, settings).handlers())
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.port}"
    if settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            raise ValueError("TLS needs both a certificate and its private key")
        credentials = grpc.ssl_server_credentials(
            [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())])
        add = lambda: server.add_secure_port(address, credentials)  # noqa: E731
    else:
        add = lambda: server.add_insecure_port(address)  # noqa: E731
    try:
        port = add()
    except RuntimeError:  # grpc's own text is only "Failed to bind"
        raise OSError(f"cannot listen on {address} for gRPC: the port is taken or the address is not this "
                      "machine's") from None
    return server, port
