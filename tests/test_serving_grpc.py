"""gRPC serving: wire compatibility with Triton's and TensorFlow Serving's messages, real clients end to end."""

import asyncio
import datetime
import io
import re
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from mvu.host.serving.api_keys import create_key_file
from mvu.host.serving.backend import ServingBackend
from mvu.host.serving.errors import ServingError
from mvu.host.serving.grpc_server import GrpcSettings, create_grpc_server
from mvu.host.serving.oip_grpc import infer_request_from_proto
from mvu.host.serving.protos import message_class, message_pool, service
from mvu.host.serving.repository import ModelRepository, ModelSpec
from mvu.host.serving.served_model import ServingLimits
from mvu.host.serving.tfserving_grpc import tensor_from_proto, tensor_to_proto

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import model_config_pb2, service_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL, CLASSES, SIDE = "toy", 1000, 32  # conftest's toy package


def jpeg(seed: int, size=(20, 24)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


# Wire compatibility --------------------------------------------------------------------------------------------


def _repeated(field) -> bool:
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


def _compare(ours, theirs, path=""):
    assert ours.full_name == theirs.full_name
    theirs_fields = {f.name: f for f in theirs.fields}
    for field in ours.fields:
        other = theirs_fields.get(field.name)
        assert other is not None, f"{path}{ours.name}.{field.name} is not in tritonclient's messages"
        where = f"{path}{ours.name}.{field.name}"
        assert (field.number, field.type, _repeated(field)) == (other.number, other.type, _repeated(other)), where
        assert (field.message_type and field.message_type.full_name) == \
               (other.message_type and other.message_type.full_name), where
        assert (field.containing_oneof and field.containing_oneof.name) == \
               (other.containing_oneof and other.containing_oneof.name), where
    nested = {m.name: m for m in theirs.nested_types}
    for inner in ours.nested_types:
        _compare(inner, nested[inner.name], f"{path}{ours.name}.")


def test_inference_messages_match_tritonclient():
    for file, theirs_file in (("grpc_service.proto", service_pb2.DESCRIPTOR),
                              ("model_config.proto", model_config_pb2.DESCRIPTOR)):
        ours = message_pool().FindFileByName(file)
        assert ours.package == "inference" and ours.message_types_by_name
        for name, message in ours.message_types_by_name.items():
            _compare(message, theirs_file.message_types_by_name[name])
    data_types = message_pool().FindEnumTypeByName("inference.DataType")
    assert {v.name: v.number for v in data_types.values} == {
        v.name: v.number for v in model_config_pb2.DESCRIPTOR.enum_types_by_name["DataType"].values}
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service("inference.GRPCInferenceService").methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == \
               (other.input_type.full_name, other.output_type.full_name)


def test_tensorflow_messages_have_the_published_field_numbers():
    tensor = message_class("tensorflow.TensorProto")(dtype=7, string_val=[b"ab"])
    tensor.tensor_shape.dim.add(size=1)
    assert tensor.SerializeToString() == b"\x08\x07\x12\x04\x12\x02\x08\x01\x42\x02ab"
    request = message_class("tensorflow.serving.PredictRequest")(output_filter=["y"])
    request.model_spec.name = "m"
    request.model_spec.version.value = 3
    assert request.SerializeToString() == b"\x0a\x07\x0a\x01m\x12\x02\x08\x03\x1a\x01y"
    unknown = message_class("tensorflow.TensorShapeProto")(unknown_rank=True)
    assert unknown.SerializeToString() == b"\x18\x01"
    floats = message_class("tensorflow.TensorProto")(float_val=[1.0], int64_val=[2], tensor_content=b"x")
    assert floats.SerializeToString() == b"\x22\x01x\x2a\x04\x00\x00\x80\x3f\x52\x01\x02"
    assert [m.name for m in service("tensorflow.serving.PredictionService").methods] == ["Predict",
                                                                                       "GetModelMetadata"]


# Tensor conversions --------------------------------------------------------------------------------------------

TensorProto = message_class("tensorflow.TensorProto")


def tf_tensor(dtype: str, shape=None, unknown_rank=False, **fields):
    proto = TensorProto(dtype=message_pool().FindEnumTypeByName("tensorflow.DataType").values_by_name[dtype].number,
                        **fields)
    proto.tensor_shape.unknown_rank = unknown_rank
    for size in shape or ():
        proto.tensor_shape.dim.add(size=size)
    return proto


def test_tensor_protos_decode_from_content_and_typed_values():
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    from_content = tensor_from_proto("x", tf_tensor("DT_FLOAT", [2, 3], tensor_content=data.tobytes()))
    np.testing.assert_array_equal(from_content.data, data)
    from_values = tensor_from_proto("x", tf_tensor("DT_FLOAT", [2, 3], float_val=data.reshape(-1).tolist()))
    assert from_values.datatype == "FP32" and from_values.shape == (2, 3)
    np.testing.assert_array_equal(from_values.data, data)
    filled = tensor_from_proto("x", tf_tensor("DT_INT32", [2, 2], int_val=[7]))
    np.testing.assert_array_equal(filled.data, np.full((2, 2), 7, np.int32))
    vector = tensor_from_proto("x", tf_tensor("DT_FLOAT", unknown_rank=True, float_val=[1, 2, 3]))
    assert vector.shape == (3,)
    half = tensor_from_proto("x", tf_tensor("DT_HALF", [2], half_val=np.float16([1.5, -2]).view(np.uint16).tolist()))
    np.testing.assert_array_equal(half.data, np.float16([1.5, -2]))
    strings = tensor_from_proto("s", tf_tensor("DT_STRING", [2], string_val=[b"a", b"bc"]))
    assert strings.datatype == "BYTES" and list(strings.data) == [b"a", b"bc"]
    encoded = tensor_from_proto("s", tf_tensor("DT_STRING", [2], tensor_content=b"\x01\x02abc"))
    assert list(encoded.data) == [b"a", b"bc"]
    back = tensor_to_proto("FP32", data)
    assert [d.size for d in back.tensor_shape.dim] == [2, 3] and list(back.float_val) == data.reshape(-1).tolist()


@pytest.mark.parametrize("proto, message", [
    (tf_tensor("DT_COMPLEX64", [1]), "unsupported dtype DT_COMPLEX64"),
    (tf_tensor("DT_FLOAT", [-1, 3], float_val=[1, 2, 3]), "unknown or negative dimension"),
    (tf_tensor("DT_FLOAT", [2], float_val=[1, 2, 3]), "3 elements for shape [2]"),
    (tf_tensor("DT_FLOAT", [2], int_val=[1, 2]), "DT_FLOAT values belong in float_val or tensor_content, not int_val"),
    (tf_tensor("DT_FLOAT", [2]), "no values for shape [2]"),
    (tf_tensor("DT_FLOAT", [2], tensor_content=b"\x00" * 7), "7 bytes of data for FP32 [2] (expected 8)"),
    (tf_tensor("DT_STRING", [2], tensor_content=b"\x01\x05abc"), "its lengths say 6"),
    (tf_tensor("DT_FLOAT", [1], unknown_rank=True), "unknown_rank set and 1 dims"),
    (tf_tensor("DT_UINT8", [1], int_val=[300]), "data is not UINT8"),
])
def test_bad_tensor_protos_get_precise_400s(proto, message):
    with pytest.raises(ServingError, match=re.escape(message)) as caught:
        tensor_from_proto("x", proto)
    assert caught.value.status == 400


def test_infer_requests_decode_raw_and_typed_contents():
    request = service_pb2.ModelInferRequest(model_name="m", id="7", raw_input_contents=[np.float32([1, 2]).tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    request.outputs.add(name="scores").parameters["classification"].int64_param = 3
    ours = infer_request_from_proto(message_class("inference.ModelInferRequest").FromString(
        request.SerializeToString()), timeout=5.0)
    assert (ours.model_name, ours.model_version, ours.id, ours.timeout) == ("m", None, "7", 5.0)
    np.testing.assert_array_equal(ours.inputs[0].data, [[1, 2]])
    assert (ours.outputs[0].name, ours.outputs[0].classification) == ("scores", 3)
    typed = message_class("inference.ModelInferRequest")()
    typed.inputs.add(name="images", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"a", b"b"])
    assert list(infer_request_from_proto(typed).inputs[0].data) == [b"a", b"b"]


def _infer_request(raw=(), **tensor):
    request = message_class("inference.ModelInferRequest")(model_name="m", raw_input_contents=list(raw))
    request.inputs.add(**tensor)
    return request


@pytest.mark.parametrize("request_, message", [
    (_infer_request([b"", b""], name="x", datatype="FP32", shape=[0]), "raw_input_contents has 2 entries for 1 inputs"),
    (_infer_request([b"\x00" * 4], name="x", datatype="FP32", shape=[2]), "4 bytes of data for FP32 [2] (expected 8)"),
    (_infer_request([b""], name="x", datatype="FP32", shape=[-1]), "negative dimension in shape [-1]"),
    (_infer_request([b""], name="x", datatype="FLOAT", shape=[0]), "unknown datatype 'FLOAT'"),
    (_infer_request(name="x", datatype="FP32", shape=[1], contents={"int_contents": [1]}),
     "FP32 data belongs in contents.fp32_contents, not contents.int_contents"),
    (_infer_request(name="x", datatype="FP32", shape=[2]), "no data; set contents.fp32_contents or raw_input_contents"),
    (_infer_request(name="x", datatype="FP16", shape=[1]), "FP16 data must come in raw_input_contents"),
    (_infer_request([b"\x00" * 4], name="x", datatype="FP32", shape=[1], contents={"fp32_contents": [1]}),
     "contents must be empty when raw_input_contents is used"),
])
def test_bad_infer_requests_get_precise_400s(request_, message):
    with pytest.raises(ServingError, match=re.escape(message)) as caught:
        infer_request_from_proto(request_)
    assert caught.value.status == 400


# Servers -------------------------------------------------------------------------------------------------------


class ServerThread:
    """A repository and a grpc.aio server on an event loop of their own thread."""

    def __init__(self, package: Path, settings: GrpcSettings):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.repository = ModelRepository(ServingBackend("numpy"), ServingLimits(max_batch_size=4))
        self.repository.add(ModelSpec(package))
        self.server, self.port = self._call(self._start(settings))
        for model in self.repository:
            assert model.scheduler.ready.wait(60), model.scheduler.failed

    async def _start(self, settings):
        server, port = create_grpc_server(self.repository, settings)
        await server.start()
        return server, port

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def stop(self):
        self._call(self.server.stop(None))
        self.repository.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(toy_package_path):
    running = ServerThread(toy_package_path, GrpcSettings(port=0))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}") as triton:
        yield triton


def test_triton_client_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "mvu" and "classification" in metadata["extensions"]
    model = client.get_model_metadata(MODEL, as_json=True)
    assert model["versions"] == ["1"] and model["platform"] == "mvu_numpy"
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("images", "BYTES", ["-1"]), ("input", "FP32", ["-1", "3", str(SIDE), str(SIDE)])]
    assert model["outputs"][0]["shape"] == ["-1", str(CLASSES)]


def test_triton_client_infers_images_and_tensors(client):
    images = np.array([jpeg(1), jpeg(2), jpeg(1)], dtype=np.object_)
    tensor = grpcclient.InferInput("images", [3], "BYTES")
    tensor.set_data_from_numpy(images)
    result = client.infer(MODEL, [tensor], request_id="r1")
    scores = result.as_numpy("scores")
    assert scores.shape == (3, CLASSES) and scores.dtype == np.float32
    np.testing.assert_allclose(scores.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(scores[0], scores[2])
    assert result.get_response().id == "r1" and result.get_response().model_version == "1"

    pixels = np.random.default_rng(0).normal(0, 1, (2, 3, SIDE, SIDE)).astype(np.float32)
    raw = grpcclient.InferInput("input", list(pixels.shape), "FP32")
    raw.set_data_from_numpy(pixels)
    top = client.infer(MODEL, [raw], model_version="1",
                       outputs=[grpcclient.InferRequestedOutput("scores", class_count=2)]).as_numpy("scores")
    score, index, label = top[0, 0].decode().split(":", 2)
    assert top.shape == (2, 2) and 0 < float(score) < 1 and 0 <= int(index) < CLASSES and label


def test_typed_contents_match_raw_contents(server):
    pixels = np.random.default_rng(1).normal(0, 1, (1, 3, SIDE, SIDE)).astype(np.float32)
    stub = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    infer = stub.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                             request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                             response_deserializer=service_pb2.ModelInferResponse.FromString)
    typed = service_pb2.ModelInferRequest(model_name=MODEL)
    typed.inputs.add(name="input", datatype="FP32", shape=pixels.shape).contents.fp32_contents.extend(pixels.ravel())
    raw = service_pb2.ModelInferRequest(model_name=MODEL, raw_input_contents=[pixels.tobytes()])
    raw.inputs.add(name="input", datatype="FP32", shape=pixels.shape)
    answers = [np.frombuffer(infer(r).raw_output_contents[0], np.float32) for r in (typed, raw)]
    np.testing.assert_array_equal(*answers)
    stub.close()


def _tf_stub(channel, method, request, response):
    return channel.unary_unary(f"/tensorflow.serving.PredictionService/{method}",
                               request_serializer=message_class(f"tensorflow.serving.{request}").SerializeToString,
                               response_deserializer=message_class(f"tensorflow.serving.{response}").FromString)


def test_tensorflow_serving_predict_and_metadata(server, client):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        predict = _tf_stub(channel, "Predict", "PredictRequest", "PredictResponse")
        request = message_class("tensorflow.serving.PredictRequest")()
        request.model_spec.name = MODEL
        request.inputs["images"].CopyFrom(tf_tensor("DT_STRING", [2], string_val=[jpeg(1), jpeg(2)]))
        response = predict(request, timeout=30)
        scores = response.outputs["output_alias"]
        assert scores.dtype == 1 and [d.size for d in scores.tensor_shape.dim] == [2, CLASSES]
        assert response.model_spec.name == MODEL and response.model_spec.version.value == 1
        images = np.array([jpeg(1), jpeg(2)], dtype=np.object_)
        tensor = grpcclient.InferInput("images", [2], "BYTES")
        tensor.set_data_from_numpy(images)
        np.testing.assert_allclose(np.float32(scores.float_val).reshape(2, CLASSES),
                                   client.infer(MODEL, [tensor]).as_numpy("scores"))

        request.model_spec.version.value = 1
        request.output_filter.append("output_alias")
        assert predict(request).outputs["output_alias"].float_val == scores.float_val
        with pytest.raises(grpc.RpcError) as caught:
            request.model_spec.version.value = 9
            predict(request)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "no version '9'" in caught.value.details()

        metadata = _tf_stub(channel, "GetModelMetadata", "GetModelMetadataRequest", "GetModelMetadataResponse")
        answer = metadata(message_class("tensorflow.serving.GetModelMetadataRequest")(
            model_spec={"name": MODEL}, metadata_field=["signature_def"]))
        packed = answer.metadata["signature_def"]
        assert packed.type_url.endswith("/tensorflow.serving.SignatureDefMap")
        signature = message_class("tensorflow.serving.SignatureDefMap").FromString(packed.value) \
            .signature_def["serving_default"]
        assert sorted(signature.inputs) == ["images", "input"] and signature.inputs["images"].dtype == 7
        assert [d.size for d in signature.outputs["output_alias"].tensor_shape.dim] == [-1, CLASSES]


def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def test_malformed_requests_get_statuses_and_the_server_goes_on(server, client):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        junk = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        code, details = _status(lambda: junk(b"\x0a\xff\xff"))
        assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "malformed ModelInferRequest: the request is "
                                                                     "not a valid inference.ModelInferRequest message")
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=service_pb2.ModelInferRequest.SerializeToString)
        misspelt = service_pb2.ModelInferRequest(model_name=MODEL, raw_input_contents=[b"\x01\x00\x00\x00x"])
        misspelt.inputs.add(name="images", datatype="BYTES", shape=[1])
        misspelt.outputs.add(name="scores").parameters["class_count"].int64_param = 3
        code, details = _status(lambda: infer(misspelt))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(
            "output 'scores': unknown parameter 'class_count' (tritonclient's class_count is sent as 'classification')")
        predict = _tf_stub(channel, "Predict", "PredictRequest", "PredictResponse")
        request = message_class("tensorflow.serving.PredictRequest")()
        request.model_spec.name = MODEL
        request.inputs["images"].CopyFrom(tf_tensor("DT_STRING", [1], string_val=[b"not a jpeg"]))
        code, details = _status(lambda: predict(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "images" in details and "Traceback" not in details
        request.model_spec.name = "nope"
        code, details = _status(lambda: predict(request))
        assert code == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in details
        request.model_spec.name = ""
        assert _status(lambda: predict(request)) == (grpc.StatusCode.INVALID_ARGUMENT, "model_spec.name is required")

    wrong = grpcclient.InferInput("input", [1, 3, 8, 8], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape must be \[N, 3, 32, 32\]") as caught:
        client.infer(MODEL, [wrong])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="unknown model 'missing'"):
        client.get_model_metadata("missing")
    tensor = grpcclient.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([jpeg(3)], dtype=np.object_))
    assert client.infer(MODEL, [tensor]).as_numpy("scores").shape == (1, CLASSES)


def test_deadlines_internal_errors_and_metrics(server, client, monkeypatch):
    model = server.repository.get(MODEL)
    seen = []

    async def slow(request):
        seen.append(request.timeout)
        raise ServingError(504, f"model {MODEL!r} did not answer within {request.timeout:g} s")

    monkeypatch.setattr(model, "infer", slow)
    tensor = grpcclient.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([jpeg(5)], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="did not answer within") as caught:
        client.infer(MODEL, [tensor], client_timeout=5)
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert 0 < seen[0] < 6  # the client's deadline, not the server's 60 s

    async def broken(request):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(model, "infer", broken)
    with pytest.raises(InferenceServerException, match="ModelInfer failed on the server; see its log") as caught:
        client.infer(MODEL, [tensor])
    assert caught.value.status() == "StatusCode.INTERNAL" and "secret" not in str(caught.value)
    monkeypatch.undo()
    assert client.infer(MODEL, [tensor]).as_numpy("scores").shape == (1, CLASSES)
    metrics = server.repository.metrics
    assert metrics.requests.labels("grpc", "infer", "500")._value.get() >= 1
    assert metrics.failures.labels(MODEL, "504")._value.get() >= 1
    assert metrics.requests.labels("grpc", "infer", "200")._value.get() >= 1


def test_oversized_requests_are_resource_exhausted(toy_package_path):
    running = ServerThread(toy_package_path, GrpcSettings(port=0, max_message_bytes=1000))
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{running.port}") as small:
            tensor = grpcclient.InferInput("images", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([b"x" * 2000], dtype=np.object_))
            with pytest.raises(InferenceServerException) as caught:
                small.infer(MODEL, [tensor])
            assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
            assert small.is_server_live()
    finally:
        running.stop()


# TLS and API keys ----------------------------------------------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_mvu_serve_grpc_over_tls_with_api_keys(start_server, toy_package_path, tmp_path):
    cert, key = _self_signed(tmp_path)
    keys = create_key_file(tmp_path / "keys.json")
    server = start_server(toy_package_path, "--backend", "numpy", "--tls-cert", cert, "--tls-key", key,
                          "--keys", tmp_path / "keys.json", "--open-health", tls=True)
    url = f"localhost:{server.grpc_port}"
    tensor = grpcclient.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([jpeg(4)], dtype=np.object_))
    with grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(cert)) as secure:
        assert secure.is_server_live()  # open health checks
        for headers, message in ((None, "missing API key"), ({"authorization": "Bearer wrong"}, "invalid API key")):
            with pytest.raises(InferenceServerException, match=message) as caught:
                secure.infer(MODEL, [tensor], headers=headers)
            assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException, match="missing API key"):
            secure.get_model_metadata(MODEL)
        for value in (f"Bearer {keys['primary']}", keys["secondary"]):
            scores = secure.infer(MODEL, [tensor], headers={"authorization": value}).as_numpy("scores")
            assert scores.shape == (1, CLASSES)
    with grpcclient.InferenceServerClient(url) as plaintext:  # TLS only
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            plaintext.is_server_live()
