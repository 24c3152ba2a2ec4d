"""Open Inference Protocol v2 over HTTP: its endpoints, JSON bodies and the binary tensor data extension."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from mvu.host.serving.envelope import Endpoint
from mvu.host.serving.errors import ServingError
from mvu.host.serving.http_io import BodyReader, HttpRoute, json_object, json_response, path_model
from mvu.host.serving.oip import check_output_parameters, classification, model_metadata, server_metadata
from mvu.host.serving.oip_repository import EXTENSIONS as MODEL_EXTENSIONS
from mvu.host.serving.oip_repository import check_repository_parameters, model_config, model_statistics
from mvu.host.serving.repository import ModelRepository
from mvu.host.serving.tensors import InferenceRequest, InferenceResult, InputTensor, RequestedOutput

__all__ = ["EXTENSIONS", "HEADER_LENGTH", "OipHttp", "encode_infer_response", "parse_infer_request"]

#: The binary extension's header: the length of the JSON part at the start of the body.
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification", *MODEL_EXTENSIONS]


class OipHttp:
    """The endpoints under ``/v2`` for one :class:`ModelRepository`."""

    protocol = "v2"

    def __init__(self, repository: ModelRepository, read_body: BodyReader, open_health: bool = False):
        self.repository, self.read_body, self.open_health = repository, read_body, open_health

    def routes(self) -> list[HttpRoute]:
        routes = [HttpRoute("/v2", Endpoint("server_metadata", self.server_metadata)),
                  HttpRoute("/v2/health/live", Endpoint("live", self.live, self.open_health)),
                  HttpRoute("/v2/health/ready", Endpoint("ready", self.ready, self.open_health)),
                  HttpRoute("/v2/repository/index", Endpoint("repository_index", self.repository_index),
                            ("POST", "GET")),
                  HttpRoute("/v2/repository/models/{name}/load", Endpoint("repository_load", self.load), ("POST",)),
                  HttpRoute("/v2/repository/models/{name}/unload", Endpoint("repository_unload", self.unload),
                            ("POST",)),
                  HttpRoute("/v2/models/stats", Endpoint("statistics", self.statistics))]  # before /v2/models/{name}
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            routes += [HttpRoute(prefix, Endpoint("model_metadata", self.model_metadata)),
                       HttpRoute(prefix + "/ready", Endpoint("model_ready", self.model_ready)),
                       HttpRoute(prefix + "/config", Endpoint("model_config", self.model_config)),
                       HttpRoute(prefix + "/stats", Endpoint("statistics", self.statistics)),
                       HttpRoute(prefix + "/infer", Endpoint("infer", self.infer), ("POST",))]
        return routes

    async def server_metadata(self, request: Request) -> Response:
        return json_response(server_metadata(EXTENSIONS))

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        if not self.repository.ready:
            raise ServingError(503, "not ready: models are still loading")
        return json_response({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        return json_response(model_metadata(self.repository, request.path_params["name"],
                                            request.path_params.get("version")))

    async def model_ready(self, request: Request) -> Response:
        model = path_model(self.repository, request)
        if not model.ready:
            raise ServingError(503, f"model {model.name!r} version {model.version} is not ready"
                                    + (f": {model.scheduler.failed}" if model.scheduler.failed else ""))
        return json_response({"name": model.name, "version": model.version, "ready": True})

    async def infer(self, request: Request) -> Response:
        model = path_model(self.repository, request)
        body = await self.read_body(request)
        parsed, binary_default = parse_infer_request(body, _header_length(request), model.name,
                                                     request.path_params.get("version"))
        result = await self.repository.infer(parsed)
        content, header_length = encode_infer_response(result, parsed, binary_default)
        headers = {"Server-Timing": result.server_timing()}
        if header_length is None:
            return Response(content, 200, headers, media_type="application/json")
        headers[HEADER_LENGTH] = str(header_length)
        return Response(content, 200, headers, media_type="application/octet-stream")

    async def model_config(self, request: Request) -> Response:
        return json_response(model_config(path_model(self.repository, request)))

    async def statistics(self, request: Request) -> Response:
        return json_response(model_statistics(self.repository, request.path_params.get("name", ""),
                                              request.path_params.get("version")))

    async def repository_index(self, request: Request) -> Response:
        ready = (await self._optional_json(request, "the repository index request")).get("ready", False)
        if not isinstance(ready, bool):
            raise ServingError(400, "the repository index request: 'ready' must be true or false")
        return json_response(await self.repository.index(ready))

    async def load(self, request: Request) -> Response:
        check_repository_parameters("load", _parameters(await self._optional_json(request, "the load request"),
                                                        "the load request"))
        await self.repository.load(request.path_params["name"])
        return Response()

    async def unload(self, request: Request) -> Response:
        check_repository_parameters("unload", _parameters(await self._optional_json(request, "the unload request"),
                                                          "the unload request"))
        await self.repository.unload(request.path_params["name"])
        return Response()

    async def _optional_json(self, request: Request, what: str) -> dict:
        """A body that is a JSON object or empty (as tritonclient sends some)."""
        body = await self.read_body(request)
        return json_object(body, what) if body.strip() else {}


def _header_length(request: Request) -> str | None:
    """The binary extension's header; two that differ are a 400, as two Content-Lengths are."""
    values = set(request.headers.getlist(HEADER_LENGTH))
    if len(values) > 1:
        raise ServingError(400, f"{len(values)} different {HEADER_LENGTH} headers: {sorted(values)}")
    return values.pop() if values else None


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
        check_output_parameters(name, params)
        top = classification(name, params.get("classification", 0))
        binary_flag = params.get("binary_data")
        if binary_flag is not None and not isinstance(binary_flag, bool):
            raise ServingError(400, f"output {name!r}: binary_data must be true or false")
        outputs.append(RequestedOutput(name, top, binary_flag))
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
