"""TensorFlow Serving's REST API: its endpoints, ``:predict`` with row (``instances``) or columnar (``inputs``)
JSON that names its input (the signature has two), model status and metadata; ``:classify`` and ``:regress``
answer as TensorFlow Serving does for a model without those signatures."""

from __future__ import annotations

import base64
import binascii

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from mvu.host.serving.envelope import Endpoint
from mvu.host.serving.errors import ServingError
from mvu.host.serving.http_io import BodyReader, HttpRoute, json_object, json_response, path_model
from mvu.host.serving.repository import ModelRepository
from mvu.host.serving.served_model import IMAGES_INPUT, TENSOR_INPUT, ServedModel
from mvu.host.serving.tensors import InferenceRequest, InputTensor, numeric_array
from mvu.host.serving.tfserving import PREDICT_METHOD, SIGNATURE, check_signature, signature, tf_name

__all__ = ["OTHER_METHODS", "UNNAMED_INPUTS", "UNNAMED_INSTANCES", "TfServingHttp", "model_metadata", "model_status",
           "parse_predict"]


class TfServingHttp:
    """The endpoints under ``/v1/models`` for one :class:`ModelRepository`."""

    protocol = "v1"

    def __init__(self, repository: ModelRepository, read_body: BodyReader):
        self.repository, self.read_body = repository, read_body

    def routes(self) -> list[HttpRoute]:
        routes = []
        for prefix in ("/v1/models/{name}", "/v1/models/{name}/versions/{version}"):
            routes += [HttpRoute(prefix, Endpoint("tf_status", self.status)),
                       HttpRoute(prefix + "/metadata", Endpoint("tf_metadata", self.metadata)),
                       HttpRoute(prefix + ":predict", Endpoint("tf_predict", self.predict), ("POST",))]
            routes += [HttpRoute(f"{prefix}:{method}", Endpoint(f"tf_{method}", self._no_signature(method)), ("POST",))
                       for method in OTHER_METHODS]
        return routes

    async def status(self, request: Request) -> Response:
        if "version" in request.path_params:
            return json_response(model_status([path_model(self.repository, request)]))
        return json_response(model_status(self.repository.versions(request.path_params["name"])))

    async def metadata(self, request: Request) -> Response:
        return json_response(model_metadata(path_model(self.repository, request)))

    async def predict(self, request: Request) -> Response:
        model = path_model(self.repository, request)
        parsed, rows = parse_predict(await self.read_body(request), model.name, request.path_params.get("version"))
        result = await self.repository.infer(parsed)
        return json_response(_answer(result.outputs, rows), headers={"Server-Timing": result.server_timing()})

    def _no_signature(self, method: str):
        """``:classify`` or ``:regress``, answered as TensorFlow Serving answers for a model whose signature is
        a predict signature (after it has read the request and found its signature)."""
        async def answer(request: Request) -> Response:
            model = path_model(self.repository, request)
            body = json_object(await self.read_body(request), f"the {method} request")
            check_signature(model.name, body.get("signature_name", SIGNATURE))
            raise ServingError(400, f"Expected {OTHER_METHODS[method]} signature method_name to be "
                                    f"tensorflow/serving/{method}. Was: {PREDICT_METHOD}")

        return answer


#: TensorFlow Serving's answers to values that do not name their input, for a signature of several inputs.
UNNAMED_INSTANCES = ("instances is a plain list, but expecting list of objects as multiple input tensors required "
                     "as per tensorinfo_map")
UNNAMED_INPUTS = ("inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                  "tensorinfo_map")
#: The methods that TensorFlow Serving's REST API has besides predict -> what its signature is called.
OTHER_METHODS = {"classify": "classification", "regress": "regression"}


def _image(value, where: str) -> bytes:
    if not (isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)):
        raise ServingError(400, f"{where}: image bytes must be given as {{\"b64\": \"<base64>\"}}")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise ServingError(400, f"{where}: 'b64' is not valid base64") from None


def _is_image(value) -> bool:
    return isinstance(value, dict) and "b64" in value


def _named(value: dict, where: str):
    """A ``{input_name: value}`` instance or columnar object: which input, and its value."""
    if len(value) != 1 or next(iter(value)) not in (IMAGES_INPUT, TENSOR_INPUT):
        raise ServingError(400, f"{where}: expected exactly one of the inputs '{IMAGES_INPUT}' or "
                                f"'{TENSOR_INPUT}', got {sorted(value)}")
    return next(iter(value.items()))


def _images_tensor(values: list, where: str) -> InputTensor:
    data = np.empty(len(values), dtype=object)
    data[:] = [_image(v, f"{where}[{i}]") for i, v in enumerate(values)]
    return InputTensor(IMAGES_INPUT, "BYTES", data.shape, data)


def _float_tensor(values, where: str) -> InputTensor:
    array = numeric_array(values, np.dtype(np.float32), f"{where}: not an array of FP32 numbers")
    return InputTensor(TENSOR_INPUT, "FP32", array.shape, array)


def _rows(instances: list) -> InputTensor:
    if not instances:
        raise ServingError(400, "'instances' is empty")
    if not all(isinstance(instance, dict) and not _is_image(instance) for instance in instances):
        raise ServingError(400, UNNAMED_INSTANCES)
    named = [_named(instance, f"instances[{index}]") for index, instance in enumerate(instances)]
    if len({name for name, _ in named}) != 1:
        raise ServingError(400, "'instances' mixes images and tensors; send one kind per request")
    values = [value for _, value in named]
    return _images_tensor(values, "instances") if named[0][0] == IMAGES_INPUT else _float_tensor(values, "instances")


def _columns(inputs) -> InputTensor:
    if not isinstance(inputs, dict) or _is_image(inputs):
        raise ServingError(400, UNNAMED_INPUTS)
    name, value = _named(inputs, "'inputs'")
    if name == TENSOR_INPUT:
        return _float_tensor(value, "inputs")
    values = [value] if _is_image(value) else value
    if not isinstance(values, list) or not values:
        raise ServingError(400, f"'inputs': '{IMAGES_INPUT}' must be a non-empty list of {{\"b64\": ...}}")
    return _images_tensor(values, "inputs")


def parse_predict(body: bytes, model: str, version: str | None) -> tuple[InferenceRequest, bool]:
    """Returns the request and whether the answer is in row format (``predictions``)."""
    request = json_object(body, "the predict request")
    check_signature(model, request.get("signature_name", SIGNATURE))
    unknown = set(request) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise ServingError(400, f"unknown fields {sorted(unknown)}; expected 'instances' or 'inputs'")
    if ("instances" in request) == ("inputs" in request):
        raise ServingError(400, "send exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    if "instances" in request:
        if not isinstance(request["instances"], list):
            raise ServingError(400, "'instances' must be a list")
        return InferenceRequest(model, version, [_rows(request["instances"])]), True
    return InferenceRequest(model, version, [_columns(request["inputs"])]), False


def _answer(outputs: list, rows: bool) -> dict:
    """TensorFlow Serving's predict answer: one output's values alone, several outputs by name (per row in the
    row format)."""
    if len(outputs) == 1:
        values = outputs[0].data.tolist()
        return {"predictions": values} if rows else {"outputs": values}
    named = {tf_name(output.name): output.data.tolist() for output in outputs}
    if not rows:
        return {"outputs": named}
    return {"predictions": [dict(zip(named, row)) for row in zip(*named.values())]}


def model_status(models: list[ServedModel]) -> dict:
    return {"model_version_status": [
        {"version": m.version, "state": "AVAILABLE" if m.ready else ("END" if m.scheduler.failed else "LOADING"),
         "status": {"error_code": "OK" if not m.scheduler.failed else "UNAVAILABLE",
                    "error_message": m.scheduler.failed or ""}} for m in models]}


def _tensor_info(name: str, dtype: str, shape: list[int]) -> dict:
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in shape],
                                             "unknown_rank": False}, "name": name}


def model_metadata(model: ServedModel) -> dict:
    tensors = {side: {name: _tensor_info(name, *info) for name, info in entries.items()}
               for side, entries in signature(model).items()}
    return {"model_spec": {"name": model.name, "signature_name": "", "version": model.version},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: {**tensors, "method_name": PREDICT_METHOD}}}}}
