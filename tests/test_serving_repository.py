"""The model repository in a running `mvu serve` (Triton's repository extension, over HTTP and gRPC): a rolling
update under steady load fails no request, an unload waits for the requests in flight, versions that fail to
load say why while the others serve; Triton's model configuration and statistics, read with tritonclient."""

import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import urllib3

from mvu.host.serving.model_folder import PACKAGE_FILE

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is a dev dependency")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL, SIDE, CLASSES = "toy", 32, 1000


def add_version(folder: Path, version: int, package: Path | bytes) -> None:
    """Version ``version`` of the toy model, as a control plane adds it: written aside, then renamed in."""
    staging = folder / MODEL / f".staging-{version}"
    staging.mkdir(parents=True)
    if isinstance(package, bytes):
        (staging / PACKAGE_FILE).write_bytes(package)
    else:
        shutil.copy(package, staging / PACKAGE_FILE)
    staging.rename(folder / MODEL / str(version))


@pytest.fixture
def folder(tmp_path, toy_package_path) -> Path:
    repository = tmp_path / "models"
    add_version(repository, 1, toy_package_path)
    return repository


def _index(client) -> list[tuple]:
    return [(entry["name"], entry.get("version", ""), entry.get("state", ""), entry.get("reason", ""))
            for entry in (client.get_model_repository_index() if isinstance(client, httpclient.InferenceServerClient)
                          else client.get_model_repository_index(as_json=True).get("models", []))]


def _images(module, jpeg: bytes, count: int = 1):
    tensor = module.InferInput("images", [count], "BYTES")
    tensor.set_data_from_numpy(np.array([jpeg] * count, dtype=object))
    return tensor


def _version(result) -> str:
    response = result.get_response()
    return response["model_version"] if isinstance(response, dict) else response.model_version


class SteadyLoad:
    """Client threads (HTTP and gRPC) that infer without naming a version, one request after another, and record
    each answer: (started, ended, version or the error)."""

    def __init__(self, server, jpeg: bytes, http_clients: int = 2, grpc_clients: int = 2):
        self.records: list[list[tuple]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(module, address, jpeg), daemon=True)
                        for module, address, count in ((httpclient, server.url.split("://")[1], http_clients),
                                                       (grpcclient, f"127.0.0.1:{server.grpc_port}", grpc_clients))
                        for _ in range(count)]

    def _run(self, module, address: str, jpeg: bytes) -> None:
        records = []
        self.records.append(records)
        client = module.InferenceServerClient(address)
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                outcome = _version(client.infer(MODEL, [_images(module, jpeg)]))
            except Exception as error:  # noqa: BLE001 - every failure is recorded, and fails the test
                outcome = error
            records.append((started, time.monotonic(), outcome))
        client.close()

    def __enter__(self) -> "SteadyLoad":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def answers_after(self, moment: float, count: int, timeout: float = 60.0) -> None:
        """Wait until every client has had ``count`` answers to requests it sent after ``moment``."""
        deadline = time.monotonic() + timeout
        while len(self.records) < len(self.threads) or any(
                sum(started > moment for started, _, _ in records) < count for records in self.records):
            assert time.monotonic() < deadline, "the clients stalled"
            time.sleep(0.02)

    @property
    def all(self) -> list[tuple]:
        return [record for records in self.records for record in records]


def test_a_rolling_update_under_steady_load_fails_no_request(start_server, folder, toy_package_path, cat_jpeg):
    """What a control plane does: add version 2 and load; remove version 1 and load. Four clients (two over HTTP,
    two over gRPC) infer all along without naming a version."""
    server = start_server("--model-repository", folder, "--access-log", "off")
    http = httpclient.InferenceServerClient(server.url.split("://")[1])
    grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    readiness, probing = [], threading.Event()

    def probe() -> None:  # a load balancer's readiness probe: a version warming up must not fail it
        pool = urllib3.PoolManager(retries=False, timeout=10)
        while not probing.is_set():
            readiness.append(pool.request("GET", server.url + "/v2/health/ready").status)

    prober = threading.Thread(target=probe)
    prober.start()
    with SteadyLoad(server, cat_jpeg) as load:
        load.answers_after(0, 10)
        add_version(folder, 2, toy_package_path)
        http.load_model(MODEL)  # returns once version 2 is warm
        switched = time.monotonic()
        load.answers_after(switched, 10)
        shutil.rmtree(folder / MODEL / "1")
        grpc_client.load_model(MODEL)  # unloads version 1
        retired = time.monotonic()
        load.answers_after(retired, 10)
    probing.set()
    prober.join(30)
    assert len(readiness) > 10 and set(readiness) == {200}
    failures = [outcome for _, _, outcome in load.all if not isinstance(outcome, str)]
    assert not failures, failures[:3]
    assert {outcome for started, _, outcome in load.all if started > switched} == {"2"}
    assert {outcome for _, ended, outcome in load.all if ended < switched} == {"1"}
    assert _index(http) == [(MODEL, "2", "READY", "")]
    print(f"rolling update: {len(load.all)} requests from {len(load.threads)} clients, none failed; "
          f"{sum(o == '1' for *_, o in load.all)} answered by version 1, {sum(o == '2' for *_, o in load.all)} by 2")
    assert "Traceback" not in server.stderr
    assert "model toy version 2 loaded" in server.stderr and "model toy version 1 unloaded" in server.stderr


def test_an_unload_waits_for_the_requests_in_flight(start_server, folder, cat_jpeg):
    """Requests pinned to version 1 run back to back; the unload comes while one is being decoded or run: that one
    is answered, the unload returns after it, and later ones (or one whose body was still arriving) are told the
    model is gone."""
    server = start_server("--model-repository", folder, "--access-log", "off", "--timeout", "10")
    address = server.url.split("://")[1]
    records, stop = [], threading.Event()

    def pinned() -> None:
        client = httpclient.InferenceServerClient(address, network_timeout=60)
        tensor = _images(httpclient, cat_jpeg, 24)  # a few dozen ms of decoding, then the executor
        while not stop.is_set():
            started = time.monotonic()
            try:
                outcome = _version(client.infer(MODEL, [tensor], model_version="1"))
            except InferenceServerException as error:
                outcome = error.status()
            records.append((started, time.monotonic(), outcome))

    workers = [threading.Thread(target=pinned) for _ in range(2)]  # the version is never idle between two requests
    for worker in workers:
        worker.start()
    while len(records) < 2:
        time.sleep(0.01)
    unloading = time.monotonic()
    httpclient.InferenceServerClient(address).unload_model(MODEL)
    unloaded = time.monotonic()
    time.sleep(0.2)
    stop.set()
    for worker in workers:
        worker.join(60)
    assert {outcome for *_, outcome in records} == {"1", "404"}, records  # never a 5xx or a 504
    assert all(ended > unloading for _, ended, outcome in records if outcome == "404")
    served = [ended for started, ended, outcome in records if started < unloading < ended and outcome == "1"]
    assert served, records  # the version was busy when the unload came, and answered
    assert unloaded >= max(served) - 0.02  # two answers on two connections may come in either order


def test_versions_that_fail_to_load_say_why_and_the_others_serve_on(start_server, folder, toy_package_path,
                                                                     cat_jpeg):
    server = start_server("--model-repository", folder, f"other@7={toy_package_path}", "--access-log", "off")
    http = httpclient.InferenceServerClient(server.url.split("://")[1])
    grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    add_version(folder, 3, b"not a package")
    (folder / MODEL / "4").mkdir()  # no model.mvu in it
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.load_model(MODEL)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert caught.value.message() == ("model 'toy': version 3 failed to load: its model.mvu is not an mvu model "
                                      "package; version 4 failed to load: its folder has no model.mvu")
    expected = [("other", "7", "READY", ""), (MODEL, "1", "READY", ""),
                (MODEL, "3", "UNAVAILABLE", "failed to load: its model.mvu is not an mvu model package"),
                (MODEL, "4", "UNAVAILABLE", "failed to load: its folder has no model.mvu")]
    assert _index(http) == expected == _index(grpc_client)
    assert http.is_server_ready()
    assert _version(http.infer(MODEL, [_images(httpclient, cat_jpeg)])) == "1"

    shutil.rmtree(folder / MODEL / "3")
    shutil.rmtree(folder / MODEL / "4")
    http.load_model(MODEL)
    assert _index(http) == expected[:2]

    http.unload_model(MODEL)
    assert _index(grpc_client) == [("other", "7", "READY", ""), (MODEL, "", "UNAVAILABLE", "not loaded")]
    with pytest.raises(InferenceServerException, match="unknown model 'toy'"):
        http.infer(MODEL, [_images(httpclient, cat_jpeg)])
    grpc_client.unload_model("other")  # a model named on the command line unloads and loads again too
    grpc_client.load_model("other")
    http.load_model(MODEL)
    assert _index(http) == expected[:2]

    (folder / "late" / "1").mkdir(parents=True)  # a model added while serving
    shutil.copy(toy_package_path, folder / "late" / "1" / PACKAGE_FILE)
    http.load_model("late")
    assert _version(http.infer("late", [_images(httpclient, cat_jpeg)])) == "1"

    for call, message in ((lambda: http.load_model("nope"), "no model 'nope' in the model repository"),
                          (lambda: http.unload_model("nope"), "unknown model 'nope'")):
        with pytest.raises(InferenceServerException, match=message) as caught:
            call()
        assert caught.value.status() == "404"
    with pytest.raises(InferenceServerException, match="load: unknown parameter 'config'"):
        http.load_model(MODEL, config='{"max_batch_size": 2}')
    with pytest.raises(grpc.RpcError) as refused:
        grpc_client._client_stub.RepositoryIndex(grpcclient.service_pb2.RepositoryIndexRequest(repository_name="x"))
    assert refused.value.details() == "no model repository 'x': this server has one; leave repository_name empty"
    assert [(entry["name"], entry["version"]) for entry in http.get_model_repository_index()] == [
        ("late", "1"), ("other", "7"), (MODEL, "1")]
    assert "Traceback" not in server.stderr


def test_model_config_and_statistics_with_tritonclient(start_server, folder, cat_jpeg):
    server = start_server("--model-repository", folder, "--max-batch-size", "4", "--max-queue-delay-ms", "2",
                          "--access-log", "off")
    http = httpclient.InferenceServerClient(server.url.split("://")[1])
    grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    config = http.get_model_config(MODEL)
    assert (config["name"], config["platform"], config["max_batch_size"]) == (MODEL, "mvu_reference", 4)
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("images", "TYPE_STRING", [1]), ("input", "TYPE_FP32", [3, SIDE, SIDE])]
    assert config["output"] == [{"name": "scores", "data_type": "TYPE_FP32", "dims": [CLASSES]}]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 2000}
    proto = grpc_client.get_model_config(MODEL).config  # the same, as tritonclient's own ModelConfig message
    assert (proto.name, proto.platform, proto.backend, proto.max_batch_size) == (MODEL, "mvu_reference", "mvu", 4)
    assert [(t.name, list(t.dims)) for t in proto.input] == [("images", [1]), ("input", [3, SIDE, SIDE])]
    assert proto.version_policy.WhichOneof("policy_choice") == "all"
    assert proto.dynamic_batching.max_queue_delay_microseconds == 2000

    http.infer(MODEL, [_images(httpclient, cat_jpeg, 3)])
    grpc_client.infer(MODEL, [_images(grpcclient, cat_jpeg, 2)])
    with pytest.raises(InferenceServerException):
        http.infer(MODEL, [_images(httpclient, b"not an image")])
    stats = http.get_inference_statistics(MODEL)["model_stats"]
    (entry,) = stats
    inference = entry["inference_stats"]
    assert (entry["name"], entry["version"], entry["inference_count"]) == (MODEL, "1", 5)
    assert inference["success"]["count"] == 2 and inference["fail"]["count"] == 1
    assert inference["compute_infer"]["count"] == 2 and inference["compute_infer"]["ns"] > 0
    assert entry["execution_count"] == sum(batch["compute_infer"]["count"] for batch in entry["batch_stats"]) >= 2
    assert entry["last_inference"] > time.time() * 1e3 - 60_000
    proto = grpc_client.get_inference_statistics(MODEL).model_stats[0]
    assert (proto.inference_count, proto.inference_stats.success.count, proto.inference_stats.fail.count) == (5, 2, 1)
    assert http.get_inference_statistics()["model_stats"][0]["version"] == "1"  # every model
    assert http.get_inference_statistics(MODEL, "1") == {"model_stats": stats}
    with pytest.raises(InferenceServerException, match="no version '9'"):
        grpc_client.get_model_config(MODEL, "9")
    extensions = set(http.get_server_metadata()["extensions"])
    assert {"model_repository", "model_configuration", "statistics"} <= extensions
