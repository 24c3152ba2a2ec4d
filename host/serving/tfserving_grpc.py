"""TensorFlow Serving over gRPC: ``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata) and
``TensorProto`` to and from tensors."""

from __future__ import annotations

import math

import grpc
import numpy as np
from google.protobuf.message import Message

from mvu.host.serving.envelope import Endpoint
from mvu.host.serving.errors import ServingError
from mvu.host.serving.protos import message_class, message_pool
from mvu.host.serving.repository import ModelRepository
from mvu.host.serving.served_model import ServedModel
from mvu.host.serving.tensors import InferenceRequest, InputTensor, RequestedOutput, check_shape, numpy_datatype
from mvu.host.serving.tfserving import (
    DTYPE_OF,
    DTYPES,
    PREDICT_METHOD,
    SIGNATURE,
    check_signature,
    oip_name,
    signature,
    tf_name,
)

__all__ = ["MAX_MESSAGE_BYTES", "PREDICTION_SERVICE", "TfServingGrpc", "tensor_from_proto", "tensor_to_proto"]

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
#: The default limit on a request message, in bytes.
MAX_MESSAGE_BYTES = 64 << 20

_VALUE_FIELDS = sorted({field for _, field in DTYPES.values()})


class TfServingGrpc:
    """The RPCs of :data:`PREDICTION_SERVICE` for one :class:`ModelRepository`; ``max_bytes`` bounds a tensor
    that one typed value fills."""

    service = PREDICTION_SERVICE

    def __init__(self, repository: ModelRepository, max_bytes: int = MAX_MESSAGE_BYTES):
        self.repository, self.max_bytes = repository, max_bytes

    def methods(self) -> dict[str, Endpoint]:
        return {"Predict": Endpoint("tf_predict", self.predict),
                "GetModelMetadata": Endpoint("tf_metadata", self.get_model_metadata)}

    def _model(self, spec: Message) -> ServedModel:
        if not spec.name:
            raise ServingError(400, "model_spec.name is required")
        check_signature(spec.name, spec.signature_name)
        choice = spec.WhichOneof("version_choice")
        version = str(spec.version.value) if choice == "version" else spec.version_label if choice else None
        return self.repository.get(spec.name, version)

    async def predict(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        model = self._model(request.model_spec)
        unknown = [name for name in request.output_filter if oip_name(name) not in model.outputs]
        if unknown:
            raise ServingError(400, f"model {model.name!r} has no output {unknown[0]!r}; its outputs are "
                                    f"{', '.join(repr(tf_name(name)) for name in model.outputs)}")
        inputs = [tensor_from_proto(name, tensor, self.max_bytes) for name, tensor in sorted(request.inputs.items())]
        wanted = [RequestedOutput(oip_name(name)) for name in dict.fromkeys(request.output_filter)]
        result = await model.infer(InferenceRequest(model.name, model.version, inputs, wanted,
                                                    timeout=context.time_remaining()))
        response = message_class("tensorflow.serving.PredictResponse")(model_spec=_spec(model))
        for output in result.outputs:
            response.outputs[tf_name(output.name)].CopyFrom(tensor_to_proto(output.datatype, output.data))
        return response

    async def get_model_metadata(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        model = self._model(request.model_spec)
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise ServingError(400, f"metadata_field must be ['signature_def'], not {fields}")
        signatures = message_class("tensorflow.serving.SignatureDefMap")()
        definition = signatures.signature_def[SIGNATURE]
        definition.method_name = PREDICT_METHOD
        for side, tensors in signature(model).items():
            for name, (dtype, shape) in tensors.items():
                info = getattr(definition, side)[name]
                info.name, info.dtype = name, dtype
                info.tensor_shape.dim.extend(message_class("tensorflow.TensorShapeProto.Dim")(size=d) for d in shape)
        response = message_class("tensorflow.serving.GetModelMetadataResponse")(model_spec=_spec(model))
        packed = response.metadata["signature_def"]
        packed.type_url = f"type.googleapis.com/{signatures.DESCRIPTOR.full_name}"
        packed.value = signatures.SerializeToString()
        return response


def _spec(model: ServedModel) -> Message:
    spec = message_class("tensorflow.serving.ModelSpec")(name=model.name, signature_name=SIGNATURE)
    if model.version.isdigit():
        spec.version.value = int(model.version)
    else:
        spec.version_label = model.version
    return spec


def _dtype_name(number: int) -> str:
    value = message_pool().FindEnumTypeByName("tensorflow.DataType").values_by_number.get(number)
    return value.name if value else f"DataType {number}"


def tensor_from_proto(name: str, proto: Message, max_bytes: int = MAX_MESSAGE_BYTES) -> InputTensor:
    """A ``TensorProto`` as an :class:`InputTensor`: ``tensor_content`` or the typed values of its dtype.

    A single typed value fills the whole shape (as TensorFlow does) if the tensor stays within
    ``max_bytes``, the request limit; a shape of unknown rank takes all the values as one dimension.
    """
    dtype = _dtype_name(proto.dtype)
    if dtype not in DTYPES:
        raise ServingError(400, f"input {name!r}: unsupported dtype {dtype}; supported: {', '.join(DTYPES)}")
    datatype, field = DTYPES[dtype]
    shape = _shape(name, proto.tensor_shape)
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
    others = [f for f in _VALUE_FIELDS if f != field and len(getattr(proto, f))]
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


def _shape(name: str, shape: Message) -> tuple[int, ...] | None:
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
    dtype = DTYPE_OF[datatype]
    proto = message_class("tensorflow.TensorProto")(dtype=dtype)
    proto.tensor_shape.dim.extend(message_class("tensorflow.TensorShapeProto.Dim")(size=d) for d in data.shape)
    flat = data.reshape(-1)
    if datatype == "FP16":
        flat = flat.view(np.uint16)
    getattr(proto, DTYPES[dtype][1]).extend(flat.tolist())
    return proto
