"""TLS and API keys: HTTPS with a test CA, 401s, rotation without a restart, keys never logged."""

import subprocess
import sys

import numpy as np
import pytest
import urllib3

from mvu.host.serving.api_keys import create_key_file

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    return path, create_key_file(path)


@pytest.fixture(scope="module")
def secure_server(start_server, toy_package_path, tls_files, keys):
    _, cert, key = tls_files
    return start_server(toy_package_path, "--tls-cert", cert, "--tls-key", key, "--keys", keys[0], "--open-health",
                        "--grpc-port", "-1", tls=True)


@pytest.fixture(scope="module")
def https(tls_files):
    return urllib3.PoolManager(ca_certs=str(tls_files[0]), retries=False, timeout=30)


def _score(https, server, cat_jpeg, authorization=None):
    headers = {"Authorization": authorization} if authorization is not None else {}
    return https.request("POST", server.url + "/score/toy", body=cat_jpeg, headers=headers)


def test_https_needs_a_valid_key(secure_server, https, keys, cat_jpeg):
    primary, secondary = keys[1]["primary"], keys[1]["secondary"]
    for authorization, status in ((None, 401), ("", 401), ("Bearer", 401), ("Bearer wrong", 401),
                                  (primary[:-1], 401), ("Basic " + primary, 401), ("Bearer " + primary, 200),
                                  (primary, 200), ("bearer " + secondary, 200)):
        response = _score(https, secure_server, cat_jpeg, authorization)
        assert response.status == status, authorization
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "key" in response.json()["error"]
    # Health is open on this server; everything else needs the key.
    assert https.request("GET", secure_server.url + "/v2/health/ready").status == 200
    assert https.request("GET", secure_server.url + "/v2").status == 401
    assert https.request("GET", secure_server.url + "/metrics").status == 401


def test_plain_http_and_unknown_ca_are_refused(secure_server, cat_jpeg):
    with pytest.raises(urllib3.exceptions.SSLError):
        urllib3.PoolManager(retries=False).request("GET", secure_server.url + "/v2/health/live")
    with pytest.raises(urllib3.exceptions.ProtocolError):
        urllib3.PoolManager(retries=False).request("GET", secure_server.url.replace("https", "http")
                                                   + "/v2/health/live")


def test_tritonclient_over_tls_with_key(secure_server, tls_files, keys, cat_jpeg):
    client = httpclient.InferenceServerClient(secure_server.url.split("://")[1], ssl=True,
                                              ssl_options={"ca_certs": str(tls_files[0])})
    headers = {"Authorization": "Bearer " + keys[1]["primary"]}
    assert client.get_model_metadata("toy", headers=headers)["name"] == "toy"
    images = httpclient.InferInput("images", [1], "BYTES")
    images.set_data_from_numpy(np.array([cat_jpeg], dtype=object))
    assert client.infer("toy", [images], headers=headers).as_numpy("scores").shape == (1, 1000)
    with pytest.raises(Exception, match="invalid API key"):
        client.get_model_metadata("toy", headers={"Authorization": "Bearer nope"})


def test_rotation_takes_effect_without_restart_and_keys_are_never_logged(secure_server, https, keys, cat_jpeg):
    path, clear = keys
    old_primary = clear["primary"]
    assert _score(https, secure_server, cat_jpeg, old_primary).status == 200
    out = subprocess.run([sys.executable, "-m", "mvu.host.tools.cli", "keys", "regenerate", str(path), "primary"],
                         capture_output=True, text=True, check=True).stdout
    new_primary = out.split()[1]
    assert new_primary.startswith("mvu_") and new_primary != old_primary
    assert _score(https, secure_server, cat_jpeg, old_primary).status == 401  # revoked at once
    assert _score(https, secure_server, cat_jpeg, new_primary).status == 200
    assert _score(https, secure_server, cat_jpeg, clear["secondary"]).status == 200  # untouched
    clear["primary"] = new_primary
    assert secure_server.process.poll() is None
    logs = secure_server.stderr + secure_server.access_log
    assert "API keys reloaded" in logs
    for key in (old_primary, new_primary, clear["secondary"]):
        assert key not in logs
    assert old_primary not in path.read_text() and new_primary not in path.read_text()
    assert (path.stat().st_mode & 0o777) == 0o600


def test_keys_over_plain_http_off_loopback_need_a_flag(toy_package_path, keys):
    command = [sys.executable, "-m", "mvu.host.tools.cli", "serve", str(toy_package_path), "--host", "0.0.0.0",
               "--keys", str(keys[0]), "--port", "0", "--grpc-port", "-1"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "clear text" in refused.stderr and "--allow-insecure-keys" in refused.stderr


def test_keys_over_plain_http_on_loopback_start_with_a_warning(start_server, toy_package_path, keys):
    server = start_server(toy_package_path, "--keys", keys[0], "--grpc-port", "-1")
    assert "WARNING API keys are accepted over plain HTTP on 127.0.0.1" in server.stderr
    assert "--tls-cert" in server.stderr and keys[1]["primary"] not in server.stderr


def test_key_file_errors_are_clear(tmp_path):
    from mvu.host.serving.api_keys import ApiKeys, KeyFileError, regenerate_key

    with pytest.raises(KeyFileError, match="no such file|No such file"):
        ApiKeys(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"keys": 1}')
    with pytest.raises(KeyFileError, match="not an mvu key file"):
        ApiKeys(tmp_path / "bad.json")
    create_key_file(tmp_path / "k.json")
    with pytest.raises(KeyFileError, match="already exists"):
        create_key_file(tmp_path / "k.json")
    with pytest.raises(KeyFileError, match="no key 'tertiary'"):
        regenerate_key(tmp_path / "k.json", "tertiary")
