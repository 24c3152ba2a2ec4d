"""Open Inference Protocol v2 over gRPC: ``inference.GRPCInferenceService`` (KServe v2, Triton), its messages
to and from :class:`InferenceRequest` and :class:`InferenceResult`."""

from __future__ import annotations

import math

import grpc
from google.protobuf.json_format import ParseDict
from google.protobuf.message import Message

from mvu.host.serving.envelope import Endpoint
from mvu.host.serving.errors import ServingError
from mvu.host.serving.oip import check_output_parameters, classification, model_metadata, server_metadata
from mvu.host.serving.oip_repository import EXTENSIONS as MODEL_EXTENSIONS
from mvu.host.serving.oip_repository import check_repository_parameters, model_config, model_statistics
from mvu.host.serving.protos import message_class
from mvu.host.serving.repository import ModelRepository
from mvu.host.serving.tensors import (
    InferenceRequest,
    InferenceResult,
    InputTensor,
    RequestedOutput,
    check_shape,
    numpy_datatype,
)

__all__ = ["EXTENSIONS", "INFERENCE_SERVICE", "OipGrpc", "infer_request_from_proto", "infer_response_to_proto"]

INFERENCE_SERVICE = "inference.GRPCInferenceService"
EXTENSIONS = ["classification", *MODEL_EXTENSIONS]

#: datatype -> the InferTensorContents field that carries it (FP16 has none: raw contents only).
_CONTENTS_FIELDS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


class OipGrpc:
    """The RPCs of :data:`INFERENCE_SERVICE` for one :class:`ModelRepository`."""

    service = INFERENCE_SERVICE

    def __init__(self, repository: ModelRepository, open_health: bool = False):
        self.repository, self.open_health = repository, open_health

    def methods(self) -> dict[str, Endpoint]:
        return {"ServerLive": Endpoint("live", self.server_live, self.open_health),
                "ServerReady": Endpoint("ready", self.server_ready, self.open_health),
                "ModelReady": Endpoint("model_ready", self.model_ready),
                "ServerMetadata": Endpoint("server_metadata", self.server_metadata),
                "ModelMetadata": Endpoint("model_metadata", self.model_metadata),
                "ModelInfer": Endpoint("infer", self.model_infer),
                "ModelConfig": Endpoint("model_config", self.model_config),
                "ModelStatistics": Endpoint("statistics", self.model_statistics),
                "RepositoryIndex": Endpoint("repository_index", self.repository_index),
                "RepositoryModelLoad": Endpoint("repository_load", self.repository_load),
                "RepositoryModelUnload": Endpoint("repository_unload", self.repository_unload)}

    async def server_live(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        return message_class("inference.ServerLiveResponse")(live=True)

    async def server_ready(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        return message_class("inference.ServerReadyResponse")(ready=self.repository.ready)

    async def model_ready(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        model = self.repository.get(request.name, request.version)
        return message_class("inference.ModelReadyResponse")(ready=model.ready)

    async def server_metadata(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        return message_class("inference.ServerMetadataResponse")(**server_metadata(EXTENSIONS))

    async def model_metadata(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        return message_class("inference.ModelMetadataResponse")(
            **model_metadata(self.repository, request.name, request.version))

    async def model_infer(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        self.repository.get(request.model_name, request.model_version)  # a 404 before the tensors' 400s
        result = await self.repository.infer(infer_request_from_proto(request, context.time_remaining()))
        return infer_response_to_proto(result)


    async def model_config(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        config = ParseDict(model_config(self.repository.get(request.name, request.version)),
                           message_class("inference.ModelConfig")())
        return message_class("inference.ModelConfigResponse")(config=config)

    async def model_statistics(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        return ParseDict(model_statistics(self.repository, request.name, request.version),
                         message_class("inference.ModelStatisticsResponse")())

    async def repository_index(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        _one_repository(request)
        response = message_class("inference.RepositoryIndexResponse")()
        for entry in await self.repository.index(request.ready):
            response.models.add(**entry)
        return response

    async def repository_load(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        _one_repository(request)
        check_repository_parameters("load", _parameter_values(request.parameters))
        await self.repository.load(request.model_name)
        return message_class("inference.RepositoryModelLoadResponse")()

    async def repository_unload(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        _one_repository(request)
        check_repository_parameters("unload", _parameter_values(request.parameters))
        await self.repository.unload(request.model_name)
        return message_class("inference.RepositoryModelUnloadResponse")()


def _one_repository(request: Message) -> None:
    if request.repository_name:
        raise ServingError(400, f"no model repository {request.repository_name!r}: this server has one; leave "
                                "repository_name empty")


def _parameter_values(parameters) -> dict:
    """A map of ``ModelRepositoryParameter`` as plain values (None for one with no value set)."""
    return {name: getattr(value, kind) if (kind := value.WhichOneof("parameter_choice")) else None
            for name, value in parameters.items()}


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
    """The ``classification`` parameter of a requested output, 0 when absent."""
    check_output_parameters(output.name, output.parameters)
    if "classification" not in output.parameters:
        return 0
    parameter = output.parameters["classification"]
    kind = parameter.WhichOneof("parameter_choice")
    return classification(output.name, getattr(parameter, kind) if kind else None)


def infer_response_to_proto(result: InferenceResult) -> Message:
    """A ``ModelInferResponse`` with every output in ``raw_output_contents``, as Triton answers."""
    response = message_class("inference.ModelInferResponse")(
        model_name=result.model_name, model_version=result.model_version, id=result.id or "")
    for output in result.outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(output.to_bytes())
    return response
