"""gRPC front ends: the Open Inference Protocol's ``inference.GRPCInferenceService`` (KServe v2, Triton) and
TensorFlow Serving's ``tensorflow.serving.PredictionService``, on one ``grpc.aio`` server.

Messages come from :mod:`.protos` (a private descriptor pool, no generated stubs). Each RPC parses its
own request, so malformed bytes, bad tensors, unknown models, a missing API key and internal failures all
end as a gRPC status with a message for the client (never a traceback); the server log has the details.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from mvu.host import __version__
from mvu.host.serving.api_keys import ApiKeys
from mvu.host.serving.errors import ServingError
from mvu.host.serving.protos import message_class, message_pool, service
from mvu.host.serving.repository import SCORES_OUTPUT, ModelRepository
from mvu.host.serving.tensors import (
    InferenceRequest,
    InferenceResult,
    InputTensor,
    RequestedOutput,
    check_shape,
    numpy_datatype,
)
from mvu.host.serving.tfserving_http import SIGNATURE as TF_SIGNATURE
from mvu.host.serving.tfserving_http import TF_SCORES_OUTPUT

__all__ = ["GrpcSettings", "GrpcServices", "create_grpc_server", "infer_request_from_proto",
           "infer_response_to_proto", "tensor_from_proto", "tensor_to_proto", "TF_SCORES_OUTPUT",
           "INFERENCE_SERVICE", "PREDICTION_SERVICE"]

log = logging.getLogger("mvu.host.serving")
access_log = logging.getLogger("mvu.access")

INFERENCE_SERVICE = "inference.GRPCInferenceService"
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
#: The default limit on a request message, in bytes.
MAX_MESSAGE_BYTES = 64 << 20

# Open Inference Protocol tensors ---------------------------------------------------------------------------

#: datatype -> the InferTensorContents field that carries it (FP16 has none: raw contents only).
_CONTENTS_FIELDS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def infer_request_from_proto(message: Message, timeout: float | None = None) -> InferenceRequest:
    """A ``ModelInferRequest`` as an :class:`InferenceRequest`; 400s name the input and the cause."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise ServingError(400, f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; "
                                "give one per input, in the order of the inputs")
    inputs = []
    for index, tensor in enumerate(message.inputs):
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise ServingError(400, f"input {tensor.name!r}: contents must be empty when "
                                        "raw_input_contents is used")
            inputs.append(InputTensor.from_buffer(tensor.name, tensor.datatype, shape, raw[index]))
        else:
            inputs.append(_input_from_contents(tensor, shape))
    outputs = [RequestedOutput(output.name, _classification(output)) for output in message.outputs]
    return InferenceRequest(message.model_name, message.model_version or None, inputs, outputs,
                            id=message.id or None, timeout=timeout)


def _input_from_contents(tensor: Message, shape: list[int]) -> InputTensor:
    name, datatype = tensor.name, tensor.datatype
    numpy_datatype(datatype)  # a 400 for an unknown datatype
    field = _CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise ServingError(400, f"input {name!r}: {datatype} data must come in raw_input_contents "
                                "(InferTensorContents has no field for it)")
    others = [f.name for f, _ in tensor.contents.ListFields() if f.name != field]
    if others:
        raise ServingError(400, f"input {name!r}: {datatype} data belongs in contents.{field}, "
                                f"not contents.{others[0]}")
    values = getattr(tensor.contents, field)
    if not values and math.prod(check_shape(name, shape)):
        raise ServingError(400, f"input {name!r}: no data; set contents.{field} or raw_input_contents")
    return InputTensor.from_values(name, datatype, shape, list(values))


def _classification(output: Message) -> int:
    """The classification extension's ``classification`` parameter (top-k), 0 when absent."""
    if "classification" not in output.parameters:
        return 0
    parameter = output.parameters["classification"]
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise ServingError(400, f"output {output.name!r}: the classification parameter must be an integer")
    return getattr(parameter, kind)


def infer_response_to_proto(result: InferenceResult) -> Message:
    """A ``ModelInferResponse`` with every output in ``raw_output_contents``, as Triton answers."""
    response = message_class("inference.ModelInferResponse")(
        model_name=result.model_name, model_version=result.model_version, id=result.id or "")
    for output in result.outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(output.to_bytes())
    return response


# TensorFlow tensors ----------------------------------------------------------------------------------------

#: TensorFlow DataType -> (Open Inference datatype, the TensorProto field of typed values)
_TF_DATATYPES = {
    "DT_FLOAT": ("FP32", "float_val"), "DT_DOUBLE": ("FP64", "double_val"), "DT_HALF": ("FP16", "half_val"),
    "DT_INT8": ("INT8", "int_val"), "DT_INT16": ("INT16", "int_val"), "DT_INT32": ("INT32", "int_val"),
    "DT_INT64": ("INT64", "int64_val"), "DT_UINT8": ("UINT8", "int_val"), "DT_UINT16": ("UINT16", "int_val"),
    "DT_UINT32": ("UINT32", "uint32_val"), "DT_UINT64": ("UINT64", "uint64_val"), "DT_BOOL": ("BOOL", "bool_val"),
    "DT_STRING": ("BYTES", "string_val"),
}
_TF_BY_DATATYPE = {datatype: (dt, field) for dt, (datatype, field) in _TF_DATATYPES.items()}
_TF_VALUE_FIELDS = sorted({field for _, field in _TF_DATATYPES.values()})


def _tf_dtype_name(number: int) -> str:
    value = message_pool().FindEnumTypeByName("tensorflow.DataType").values_by_number.get(number)
    return value.name if value else f"DataType {number}"


def tensor_from_proto(name: str, proto: Message, max_bytes: int = MAX_MESSAGE_BYTES) -> InputTensor:
    """A ``TensorProto`` as an :class:`InputTensor`: ``tensor_content`` or the typed values of its dtype.

    A single typed value fills the whole shape (as TensorFlow does) if the tensor stays within
    ``max_bytes``, the request limit; a shape of unknown rank takes all the values as one dimension.
    """
    dtype = _tf_dtype_name(proto.dtype)
    if dtype not in _TF_DATATYPES:
        raise ServingError(400, f"input {name!r}: unsupported dtype {dtype}; supported: {', '.join(_TF_DATATYPES)}")
    datatype, field = _TF_DATATYPES[dtype]
    shape = _tf_shape(name, proto.tensor_shape)
    if proto.tensor_content:
        content = proto.tensor_content
        if datatype == "BYTES":
            if shape is None:
                raise ServingError(400, f"input {name!r}: DT_STRING tensor_content needs a known tensor_shape")
            return InputTensor.from_values(name, datatype, shape, _decode_string_list(name, content, shape))
        if shape is None:
            itemsize = numpy_datatype(datatype).itemsize
            if len(content) % itemsize:
                raise ServingError(400, f"input {name!r}: tensor_content of {len(content)} bytes is not a whole "
                                        f"number of {dtype} values ({itemsize} bytes each)")
            shape = (len(content) // itemsize,)
        return InputTensor.from_buffer(name, datatype, shape, content)
    values = getattr(proto, field)
    others = [f for f in _TF_VALUE_FIELDS if f != field and len(getattr(proto, f))]
    if not values and others:
        raise ServingError(400, f"input {name!r}: {dtype} values belong in {field} or tensor_content, "
                                f"not {others[0]}")
    shape = (len(values),) if shape is None else check_shape(name, shape)
    count = math.prod(shape)
    if not values and count:
        raise ServingError(400, f"input {name!r}: no values for shape {list(shape)}; set {field} or tensor_content")
    values = list(values)
    if len(values) == 1 and count > 1:
        size = count * numpy_datatype(datatype).itemsize
        if size > max_bytes:
            raise ServingError(413, f"input {name!r}: one {field} value filling shape {list(shape)} makes {size} "
                                    f"bytes, more than the request limit of {max_bytes}")
        values *= count
    if datatype == "FP16":
        values = _half_values(name, values)
    return InputTensor.from_values(name, datatype, shape, values)


def _tf_shape(name: str, shape: Message) -> tuple[int, ...] | None:
    """The dims of a ``TensorShapeProto``, ``None`` for an unknown rank; 400 for unknown or negative sizes."""
    if shape.unknown_rank:
        if shape.dim:
            raise ServingError(400, f"input {name!r}: tensor_shape has unknown_rank set and {len(shape.dim)} dims")
        return None
    sizes = [dim.size for dim in shape.dim]
    if any(size < 0 for size in sizes):
        raise ServingError(400, f"input {name!r}: tensor_shape {sizes} has an unknown or negative dimension; "
                                "a request tensor needs every size")
    return tuple(sizes)


def _half_values(name: str, bits: list[int]) -> np.ndarray:
    """``half_val`` entries (the 16 bits of each value in an int32) as float16."""
    if any(not 0 <= b <= 0xFFFF for b in bits):
        raise ServingError(400, f"input {name!r}: half_val entries must be 16-bit patterns (0..65535)")
    return np.asarray(bits, dtype=np.uint16).view(np.float16)


def _decode_string_list(name: str, content: bytes, shape: tuple[int, ...]) -> list[bytes]:
    """DT_STRING ``tensor_content``: every element's varint length, then every element's bytes."""
    count, offset, lengths = math.prod(shape), 0, []
    for _ in range(count):
        length = shift = 0
        while True:
            if offset >= len(content) or shift > 28:
                raise ServingError(400, f"input {name!r}: DT_STRING tensor_content has a truncated or bad "
                                        f"length at byte {offset}")
            byte = content[offset]
            offset += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        lengths.append(length)
    if offset + sum(lengths) != len(content):
        raise ServingError(400, f"input {name!r}: DT_STRING tensor_content holds {len(content) - offset} bytes of "
                                f"strings, its lengths say {sum(lengths)}")
    strings = []
    for length in lengths:
        strings.append(content[offset:offset + length])
        offset += length
    return strings


def tensor_to_proto(datatype: str, data: np.ndarray) -> Message:
    """A ``TensorProto`` with typed values, as TensorFlow Serving answers by default."""
    dtype, field = _TF_BY_DATATYPE[datatype]
    proto = message_class("tensorflow.TensorProto")(dtype=dtype)
    proto.tensor_shape.dim.extend(message_class("tensorflow.TensorShapeProto.Dim")(size=d) for d in data.shape)
    flat = data.reshape(-1)
    if datatype == "FP16":
        flat = flat.view(np.uint16)
    getattr(proto, field).extend(flat.tolist())
    return proto


# Services --------------------------------------------------------------------------------------------------


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
    timeout: float = 60.0  # seconds per request; a shorter client deadline wins


Handler = Callable[[Message, grpc.aio.ServicerContext], Awaitable[Message]]


def _model_name(request: Message) -> str:
    """The model a request names, whichever field it uses."""
    fields = request.DESCRIPTOR.fields_by_name
    if "model_spec" in fields:
        return request.model_spec.name
    return next((getattr(request, f) for f in ("model_name", "name") if f in fields), "")


class GrpcServices:
    """The RPC implementations over one :class:`ModelRepository`."""

    def __init__(self, repository: ModelRepository, settings: GrpcSettings):
        self.repository, self.settings, self.metrics = repository, settings, repository.metrics

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """Generic handlers for both services, built from the service descriptors."""
        open_health = self.settings.open_health
        implementations = {  # method: (endpoint label as the HTTP front end names it, handler, needs no key)
            INFERENCE_SERVICE: {"ServerLive": ("live", self.server_live, open_health),
                                "ServerReady": ("ready", self.server_ready, open_health),
                                "ModelReady": ("model_ready", self.model_ready, False),
                                "ServerMetadata": ("server_metadata", self.server_metadata, False),
                                "ModelMetadata": ("model_metadata", self.model_metadata, False),
                                "ModelInfer": ("infer", self.model_infer, False)},
            PREDICTION_SERVICE: {"Predict": ("tf_predict", self.predict, False),
                                 "GetModelMetadata": ("tf_metadata", self.get_model_metadata, False)},
        }
        generic = []
        for service_name, methods in implementations.items():
            descriptors = service(service_name).methods_by_name
            generic.append(grpc.method_handlers_generic_handler(service_name, {
                method: self._rpc(descriptors[method], *implementation)
                for method, implementation in methods.items()}))
        return generic

    def _rpc(self, method, endpoint: str, handler: Handler, open_access: bool) -> grpc.RpcMethodHandler:
        """One RPC: key check, parsing, the handler; every failure becomes a status, metrics and a log line."""
        request_class = message_class(method.input_type.full_name)

        async def call(raw: bytes, context: grpc.aio.ServicerContext) -> Message:
            started, model, failure = time.perf_counter(), "", None
            try:
                if not open_access:
                    self._authorize(context)
                try:
                    request = request_class.FromString(raw)
                except DecodeError as error:
                    raise ServingError(400, f"malformed {request_class.DESCRIPTOR.name}: {error}") from None
                model = _model_name(request)
                response = await handler(request, context)
            except ServingError as error:
                failure = error
            except Exception:  # noqa: BLE001 - the client gets a status, the log gets the trace
                log.exception("gRPC %s failed", method.full_name)
                failure = ServingError(500, f"{method.name} failed on the server; see its log")
            status = failure.status if failure else 200  # HTTP-style, as the HTTP front end counts
            self.metrics.requests.labels("grpc", endpoint, str(status)).inc()
            if failure and model in self.repository:  # never a label per name a client makes up
                self.metrics.failures.labels(model, str(status)).inc()
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(json.dumps({
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "client": context.peer(),
                    "method": f"/{method.containing_service.full_name}/{method.name}",
                    "status": failure.grpc_code if failure else "OK",
                    "ms": round((time.perf_counter() - started) * 1e3, 3), "bytes_in": len(raw), "protocol": "grpc",
                    "endpoint": endpoint, "model": model or None}))
            if failure:
                await context.abort(getattr(grpc.StatusCode, failure.grpc_code), failure.message)
            return response

        return grpc.unary_unary_rpc_method_handler(
            call, response_serializer=message_class(method.output_type.full_name).SerializeToString)

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if self.settings.keys is not None:
            metadata = dict(context.invocation_metadata() or ())
            self.settings.keys.check(metadata.get("authorization"))

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise ServingError(504, "the client's deadline passed before the request could run")
        return self.settings.timeout if remaining is None else min(self.settings.timeout, remaining)

    # Open Inference Protocol ------------------------------------------------------------------------------

    async def server_live(self, request: Message, context) -> Message:
        return message_class("inference.ServerLiveResponse")(live=True)

    async def server_ready(self, request: Message, context) -> Message:
        return message_class("inference.ServerReadyResponse")(ready=self.repository.ready)

    async def model_ready(self, request: Message, context) -> Message:
        model = self.repository.get(request.name, request.version or None)
        return message_class("inference.ModelReadyResponse")(ready=model.ready)

    async def server_metadata(self, request: Message, context) -> Message:
        return message_class("inference.ServerMetadataResponse")(
            name="mvu", version=__version__, extensions=["classification"])

    async def model_metadata(self, request: Message, context) -> Message:
        data = self.repository.get(request.name, request.version or None).metadata()
        return message_class("inference.ModelMetadataResponse")(
            name=data["name"], versions=data["versions"], platform=data["platform"],
            inputs=data["inputs"], outputs=data["outputs"])

    async def model_infer(self, request: Message, context) -> Message:
        model = self.repository.get(request.model_name, request.model_version or None)
        result = await model.infer(infer_request_from_proto(request, self._timeout(context)))
        return infer_response_to_proto(result)

    # TensorFlow Serving -----------------------------------------------------------------------------------

    def _tf_model(self, spec: Message):
        if not spec.name:
            raise ServingError(400, "model_spec.name is required")
        if spec.signature_name not in ("", TF_SIGNATURE):
            raise ServingError(400, f"model {spec.name!r} has no signature {spec.signature_name!r}; "
                                    f"its signature is {TF_SIGNATURE!r}")
        choice = spec.WhichOneof("version_choice")
        version = str(spec.version.value) if choice == "version" else spec.version_label if choice else None
        return self.repository.get(spec.name, version)

    @staticmethod
    def _tf_spec(model) -> Message:
        spec = message_class("tensorflow.serving.ModelSpec")(name=model.name, signature_name=TF_SIGNATURE)
        if model.version.isdigit():
            spec.version.value = int(model.version)
        else:
            spec.version_label = model.version
        return spec

    async def predict(self, request: Message, context) -> Message:
        model = self._tf_model(request.model_spec)
        unknown = [name for name in request.output_filter if name not in (TF_SCORES_OUTPUT, SCORES_OUTPUT)]
        if unknown:
            raise ServingError(400, f"model {model.name!r} has no output {unknown[0]!r}; "
                                    f"its output is {TF_SCORES_OUTPUT!r}")
        inputs = [tensor_from_proto(name, tensor, self.settings.max_message_bytes)
                  for name, tensor in sorted(request.inputs.items())]
        result = await model.infer(InferenceRequest(model.name, model.version, inputs,  # the one output: scores
                                                    timeout=self._timeout(context)))
        response = message_class("tensorflow.serving.PredictResponse")(model_spec=self._tf_spec(model))
        for output in result.outputs:
            response.outputs[TF_SCORES_OUTPUT].CopyFrom(tensor_to_proto(output.datatype, output.data))
        return response

    async def get_model_metadata(self, request: Message, context) -> Message:
        model = self._tf_model(request.model_spec)
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise ServingError(400, f"metadata_field must be ['signature_def'], not {fields}")
        signatures = message_class("tensorflow.serving.SignatureDefMap")()
        signature = signatures.signature_def[TF_SIGNATURE]
        signature.method_name = "tensorflow/serving/predict"
        data = model.metadata()
        for tensors, entries, rename in ((signature.inputs, data["inputs"], {}),
                                         (signature.outputs, data["outputs"], {SCORES_OUTPUT: TF_SCORES_OUTPUT})):
            for entry in entries:
                info = tensors[rename.get(entry["name"], entry["name"])]
                info.name, info.dtype = entry["name"], _TF_BY_DATATYPE[entry["datatype"]][0]
                info.tensor_shape.dim.extend(message_class("tensorflow.TensorShapeProto.Dim")(size=d)
                                             for d in entry["shape"])
        response = message_class("tensorflow.serving.GetModelMetadataResponse")(model_spec=self._tf_spec(model))
        any_ = response.metadata["signature_def"]
        any_.type_url = f"type.googleapis.com/{signatures.DESCRIPTOR.full_name}"
        any_.value = signatures.SerializeToString()
        return response


def create_grpc_server(repository: ModelRepository, settings: GrpcSettings) -> tuple[grpc.aio.Server, int]:
    """A ``grpc.aio`` server (not started) with both services, and the port it is bound to."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", settings.max_message_bytes),
                                      ("grpc.max_send_message_length", -1)])
    server.add_generic_rpc_handlers(GrpcServices(repository, settings).handlers())
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.port}"
    if settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            raise ValueError("TLS needs both a certificate and its private key")
        credentials = grpc.ssl_server_credentials(
            [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    return server, port
