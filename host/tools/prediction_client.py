"""A TensorFlow Serving gRPC client with the shape users of hosted FPGA image services know:
``PredictionClient(host, port, use_ssl=True, access_token=key).score_image(path)``."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np

from mvu.host.serving.protos import message_class

__all__ = ["PredictionClient", "PredictionError"]

_DT_STRING = 7
_PREDICT = "/tensorflow.serving.PredictionService/Predict"


class PredictionError(Exception):
    """The server refused or failed a request; the message is the server's own, with the gRPC status."""


class PredictionClient:
    """Sends images to a TF Serving ``Predict`` endpoint: the ``images`` input as DT_STRING (encoded JPEG,
    PNG, ... bytes), the ``output_alias`` output back, the key as the ``authorization`` metadata.

    ``model_name``: the served model to ask (each call may name another). ``root_certificates``: PEM bytes
    or a path, to trust a self-signed server (default: the system's CAs).
    """

    def __init__(self, host: str, port: int, *, use_ssl: bool = False, access_token: str | None = None,
                 model_name: str | None = None, root_certificates: bytes | str | Path | None = None,
                 timeout: float = 60.0):
        self.model_name = model_name
        target = f"{host}:{port}"
        if use_ssl:
            if isinstance(root_certificates, (str, Path)):
                root_certificates = Path(root_certificates).read_bytes()
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates))
        else:
            self._channel = grpc.insecure_channel(target)
        self._metadata = (("authorization", f"Bearer {access_token}"),) if access_token else ()
        self._timeout = timeout
        self._predict = self._channel.unary_unary(
            _PREDICT, request_serializer=message_class("tensorflow.serving.PredictRequest").SerializeToString,
            response_deserializer=message_class("tensorflow.serving.PredictResponse").FromString)

    def score_image(self, image: str | Path | bytes, *, model: str | None = None, input_name: str = "images",
                    output_name: str = "output_alias") -> np.ndarray:
        """The model's scores for one image (a path or its bytes), float32 [classes]."""
        data = bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else Path(image).read_bytes()
        return self.score_images([data], model=model, input_name=input_name, output_name=output_name)[0]

    def score_images(self, images: list[bytes], *, model: str | None = None, input_name: str = "images",
                     output_name: str = "output_alias") -> np.ndarray:
        """Scores for a batch of encoded images, float32 [images, classes]."""
        model = model or self.model_name
        if not model:
            raise PredictionError("name the model to score with: PredictionClient(..., model_name=NAME)")
        request = message_class("tensorflow.serving.PredictRequest")()
        request.model_spec.name = model
        tensor = request.inputs[input_name]
        tensor.dtype = _DT_STRING
        tensor.tensor_shape.dim.add(size=len(images))
        tensor.string_val.extend(images)
        request.output_filter.append(output_name)
        try:
            response = self._predict(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as error:
            raise PredictionError(f"{error.code().name}: {error.details()}") from None
        output = response.outputs[output_name]
        shape = [dim.size for dim in output.tensor_shape.dim]
        values = np.frombuffer(output.tensor_content, np.float32) if output.tensor_content else \
            np.asarray(output.float_val, np.float32)
        return values.reshape(shape)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "PredictionClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
