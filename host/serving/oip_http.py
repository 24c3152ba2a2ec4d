"""Open Inference Protocol v2 over HTTP: JSON bodies and the binary tensor data extension."""

from __future__ import annotations

import json
import sys

from mvu.host.serving.errors import ServingError
from mvu.host.serving.tensors import InferenceRequest, InferenceResult, InputTensor, RequestedOutput

__all__ = ["HEADER_LENGTH", "json_object", "parse_infer_request", "encode_infer_response"]

#: The binary extension's header: the length of the JSON part at the start of the body.
HEADER_LENGTH = "Inference-Header-Content-Length"


def json_object(text: bytes | memoryview, what: str) -> dict:
    """Parse a request body that must be a JSON object; 400s say why (``what`` names the body)."""
    try:
        value = json.loads(bytes(text))
    except UnicodeDecodeError:
        raise ServingError(400, f"{what} is not UTF-8 JSON") from None
    except json.JSONDecodeError as error:
        raise ServingError(400, f"{what} is not valid JSON: {error.msg} at line {error.lineno} "
                                f"column {error.colno}") from None
    except ValueError:  # Python's limit on the digits of an integer
        raise ServingError(400, f"{what} has an integer of more than {sys.get_int_max_str_digits()} digits") \
            from None
    except RecursionError:
        raise ServingError(400, f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise ServingError(400, f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _field(obj: dict, key: str, kind, where: str, required: bool = True):
    if key not in obj:
        if required:
            raise ServingError(400, f"{where}: missing '{key}'")
        return None
    value = obj[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ServingError(400, f"{where}: '{key}' must be {expected}, not {type(value).__name__}")
    return value


def _parameters(obj: dict, where: str) -> dict:
    return _field(obj, "parameters", dict, where, required=False) or {}


def parse_infer_request(body: bytes, header_length: str | None, model: str,
                        version: str | None) -> tuple[InferenceRequest, bool]:
    """Returns the request and whether outputs default to binary (``binary_data_output``)."""
    view = memoryview(body)
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise ServingError(400, f"Inference-Header-Content-Length must be an integer, not {header_length!r}") \
                from None
        if not 0 <= length <= len(view):
            raise ServingError(400, f"Inference-Header-Content-Length {length} is outside the {len(view)}-byte body")
        header, binary = view[:length], view[length:]
    else:
        header, binary = view, view[:0]
    request = json_object(header, "the inference request")
    parameters = _parameters(request, "request")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ServingError(400, "request: parameter 'binary_data_output' must be true or false")
    timeout = _timeout(parameters)
    request_id = _field(request, "id", str, "request", required=False)
    raw_inputs = _field(request, "inputs", list, "request")
    if not raw_inputs:
        raise ServingError(400, "request: 'inputs' is empty")
    inputs, offset = [], 0
    for index, raw in enumerate(raw_inputs):
        where = f"inputs[{index}]"
        if not isinstance(raw, dict):
            raise ServingError(400, f"{where} must be an object")
        name = _field(raw, "name", str, where)
        where = f"input {name!r}"
        shape = _field(raw, "shape", list, where)
        datatype = _field(raw, "datatype", str, where)
        size = _parameters(raw, where).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ServingError(400, f"{where}: binary_data_size must be a non-negative integer")
            if "data" in raw:
                raise ServingError(400, f"{where}: has both 'data' and binary_data_size")
            if offset + size > len(binary):
                raise ServingError(400, f"{where}: binary_data_size {size} runs past the {len(binary)} bytes of "
                                        f"binary data after the JSON header")
            inputs.append(InputTensor.from_buffer(name, datatype, shape, binary[offset:offset + size]))
            offset += size
        else:
            if "data" not in raw:
                raise ServingError(400, f"{where}: missing 'data' (or a binary_data_size parameter)")
            inputs.append(InputTensor.from_values(name, datatype, shape, raw["data"]))
    if offset != len(binary):
        raise ServingError(400, f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    outputs = []
    for index, raw in enumerate(_field(request, "outputs", list, "request", required=False) or []):
        if not isinstance(raw, dict):
            raise ServingError(400, f"outputs[{index}] must be an object")
        name = _field(raw, "name", str, f"outputs[{index}]")
        params = _parameters(raw, f"output {name!r}")
        classification = params.get("classification", 0)
        binary_flag = params.get("binary_data")
        if not isinstance(classification, int) or isinstance(classification, bool):
            raise ServingError(400, f"output {name!r}: classification must be an integer")
        if binary_flag is not None and not isinstance(binary_flag, bool):
            raise ServingError(400, f"output {name!r}: binary_data must be true or false")
        outputs.append(RequestedOutput(name, classification, binary_flag))
    return InferenceRequest(model, version, inputs, outputs, request_id, timeout), binary_default


def _timeout(parameters: dict) -> float | None:
    """Triton's request parameter ``timeout``, in microseconds (a uint64); it can only shorten the server's."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 64:
        raise ServingError(400, "request: parameter 'timeout' must be a positive 64-bit integer (microseconds)")
    return value / 1e6


def encode_infer_response(result: InferenceResult, request: InferenceRequest,
                          binary_default: bool) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary outputs, the JSON header's length."""
    binary_wanted = {o.name: o.binary for o in request.outputs}
    outputs, chunks = [], []
    for tensor in result.outputs:
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        flag = binary_wanted.get(tensor.name)
        if binary_default if flag is None else flag:
            data = tensor.to_bytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = tensor.to_list()
        outputs.append(entry)
    response = {"model_name": result.model_name, "model_version": result.model_version, "outputs": outputs}
    if result.id is not None:
        response["id"] = result.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
