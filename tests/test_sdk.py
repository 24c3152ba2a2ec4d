"""The SDK end to end: register -> deploy with TLS and keys -> score over HTTPS and TF Serving gRPC ->
rotate the primary key -> the model in use cannot be deleted -> delete the service, then the model."""

from __future__ import annotations

import ssl
import time

import numpy as np
import pytest

from mvu.host.control.registry import ModelRegistry
from mvu.host.tools.sdk import Model, PredictionClient, PredictionError, Service, Workspace, WorkspaceError


def _recompressed(package, folder):
    """The same model with other bytes: a new version."""
    import zipfile

    copy = folder / "second.mvu"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as target:
        for item in source.infolist():
            target.writestr(item.filename, source.read(item.filename))
    return copy


@pytest.fixture(scope="module")
def packages(toy_package_path, tmp_path_factory):
    """name -> package file: the toy model, and (slow tests) EfficientNet-Lite0 with its real weights."""
    def lite0():
        from mvu.hdl.contract.config import HardwareConfig
        from mvu.host.compiler.recipes import cached_package
        from mvu.host.model.package import save_package

        return save_package(cached_package("efficientnet-lite0", HardwareConfig()),
                            tmp_path_factory.mktemp("lite0") / "lite0.mvu")

    return {"toy": lambda: toy_package_path, "lite0": lite0}


@pytest.mark.parametrize("name", ["toy", pytest.param("lite0", marks=pytest.mark.slow)])
def test_register_deploy_consume_delete(tmp_path, packages, name, tls_files, cat_jpeg):
    ca, cert, key = tls_files
    package = packages[name]()
    ws = Workspace(tmp_path / "ws")
    model = Model.register(ws, package, name, tags={"stage": "test"})
    assert repr(model) == f"Model({name}:1)" and Model(ws, name).tags == {"stage": "test"}
    service = Service.deploy(ws, "classifier", [model], tls_cert=str(cert), tls_key=str(key))
    try:
        assert service.state == "healthy" and service.scoring_uri.startswith("https://127.0.0.1:")
        answer = service.run(cat_jpeg, cacert=ca)
        assert answer["model_name"] == name and len(answer["top"]) == 5
        primary, secondary = service.get_keys()
        port = service.grpc_port
        with service.prediction_client(cacert=ca) as client:
            scores = client.score_image(cat_jpeg)
        assert scores.shape == (1000,) and int(np.argmax(scores)) == answer["top"][0]["class"]

        new_primary = service.regenerate_key("primary")
        deadline = time.monotonic() + 5
        while True:  # the server re-reads its key file within a second
            try:
                PredictionClient("127.0.0.1", port, use_ssl=True, access_token=primary,
                                 model_name=name, root_certificates=ca).score_image(cat_jpeg)
            except PredictionError as error:
                assert "UNAUTHENTICATED" in str(error)
                break
            assert time.monotonic() < deadline, "the old primary key still works"
            time.sleep(0.1)
        for token in (new_primary, secondary):
            with PredictionClient("127.0.0.1", port, use_ssl=True, access_token=token, model_name=name,
                                  root_certificates=ca) as c:
                np.testing.assert_array_equal(c.score_image(cat_jpeg), scores)

        # tritonclient (Open Inference Protocol over HTTPS) with the secondary key
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(service.scoring_uri.removeprefix("https://"), ssl=True,
                                                  ssl_context_factory=lambda: ssl.create_default_context(cafile=str(ca)))
        images = httpclient.InferInput("images", [1], "BYTES")
        images.set_data_from_numpy(np.array([cat_jpeg], dtype=np.object_))
        triton_scores = client.infer(name, [images], headers={"Authorization": f"Bearer {secondary}"}).as_numpy("scores")
        np.testing.assert_array_equal(triton_scores.reshape(-1), scores)

        # a second version: the service moves to it; the first is then free to delete
        second = Model.register(ws, _recompressed(package, tmp_path), name)
        service.update([second])
        assert service.models == [f"{name}:2"] and service.run(cat_jpeg, cacert=ca)["model_version"] == "2"
        with pytest.raises(WorkspaceError, match="used by service 'classifier'"):
            second.delete()
        model.delete()
    finally:
        service.delete()
    with pytest.raises(WorkspaceError, match="service 'classifier' does not exist"):
        Service(ws, "classifier")
    second.delete()
    assert Model.list(ws) == []
    assert ModelRegistry(ws).collect_garbage() == [] and ws.store.contents() == set()
