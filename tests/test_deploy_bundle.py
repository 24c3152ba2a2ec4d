"""Deploy bundles and manifests: the bundle's wheel installs into a clean venv and serves the bundled model;
the Kubernetes resources validate against the Kubernetes schemas; the KServe runtime serves the
InferenceService's model format over protocol v2; no key in clear leaves the workspace."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from mvu.host.control import bundle as bundle_module
from mvu.host.control.bundle import build_image, write_bundle
from mvu.host.control.kubernetes import KSERVE_KINDS, KUBERNETES_KINDS, manifests
from mvu.host.control.services import ServiceManager
from mvu.host.control.workspace import Workspace, WorkspaceError
from mvu.host.tools.cli import main

KUBERNETES_VERSION = "1.30"


@pytest.fixture(scope="module")
def services(tmp_path_factory, toy_package_path, tls_files):
    manager = ServiceManager(Workspace(tmp_path_factory.mktemp("ws")))
    manager.registry.register(toy_package_path, "toy")
    _, cert, key = tls_files
    keys = {"plain": manager.create("plain", ["toy"])[1],
            "secure": manager.create("secure", ["toy:1"], tls_cert=str(cert), tls_key=str(key))[1]}
    yield manager, keys
    for service in manager.list():
        manager.delete(service.name)


@pytest.mark.parametrize("name", ["plain", "secure"])
def test_the_manifests_validate_and_hold_no_key_in_clear(services, name):
    manager, keys = services
    documents = manifests(manager, name, "registry.example/mvu-toy:1", replicas=2)
    kinds = [d["kind"] for d in documents]
    assert sorted(set(kinds)) == sorted(KUBERNETES_KINDS + KSERVE_KINDS)
    assert kinds.count("Secret") == (2 if name == "secure" else 1)
    for document in documents:
        if document["kind"] in KUBERNETES_KINDS:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    text = yaml.safe_dump_all(documents)
    assert all(key not in text for key in keys[name].values())
    by_kind = {d["kind"]: d for d in documents}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["runAsNonRoot"] and by_kind["Deployment"]["spec"]["replicas"] == 2
    assert container["readinessProbe"]["httpGet"]["scheme"] == ("HTTPS" if name == "secure" else "HTTP")
    mounted = {mount["name"] for mount in container["volumeMounts"]}
    assert mounted == {v["name"] for v in pod["volumes"]} == ({"keys", "tls"} if name == "secure" else {"keys"})
    # KServe: the runtime serves the InferenceService's model format over its protocol
    runtime, inference = by_kind["ServingRuntime"], by_kind["InferenceService"]
    model = inference["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert runtime["spec"]["containers"][0]["name"] == "kserve-container"


KSERVE_SDK = "kserve==0.21.0"


@pytest.fixture(scope="module")
def kserve_python():
    """A venv of its own with the KServe SDK (it pins protobuf < 7, mvu needs 7), made once in the build cache."""
    from mvu.hdl.toolchain import cache_dir

    venv = cache_dir() / f"venv-{KSERVE_SDK.replace('==', '-')}"
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", KSERVE_SDK, "pyyaml"],
                                   capture_output=True, text=True)
        if installed.returncode:
            pytest.skip(f"the KServe SDK could not be installed ({installed.stderr.strip().splitlines()[-1:]})")
        (venv / ".installed").touch()
    return python


def _kserve_check(python, documents) -> dict:
    done = subprocess.run([str(python), str(Path(__file__).with_name("kserve_validate.py"))],
                          input=yaml.safe_dump_all(documents), capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain", "secure"])
def test_the_kserve_resources_are_what_the_kserve_sdk_reads(services, kserve_python, name):
    report = _kserve_check(kserve_python, manifests(services[0], name, "registry.example/mvu-toy:1"))
    assert report == {"checked": ["ServingRuntime", "InferenceService"], "errors": []}


@pytest.mark.slow
def test_the_kserve_sdk_check_catches_what_it_should(services, kserve_python):
    documents = [d for d in manifests(services[0], "plain", "mvu-toy:1") if d["kind"] in KSERVE_KINDS]
    runtime, inference = documents
    mistyped = json.loads(json.dumps(runtime))
    runtime["spec"]["protocolVersion"] = ["v2"]  # not a field: protocolVersions is
    mistyped["spec"]["supportedModelFormats"][0]["autoSelect"] = "yes"  # a boolean in the SDK's model
    del inference["spec"]["predictor"]  # required
    report = _kserve_check(kserve_python, [runtime, mistyped, inference])
    assert report["checked"] == ["ServingRuntime"] and len(report["errors"]) == 3, report
    assert ".spec.protocolVersion: not a field" in report["errors"][0]
    assert "expected bool, got 'yes'" in report["errors"][1] and "`predictor`" in report["errors"][2]


def test_a_bad_manifest_is_caught_by_the_schema(services):
    documents = manifests(services[0], "plain", "mvu-toy:1")
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_k8s_command_writes_yaml(services, tmp_path, capsys):
    manager, _ = services
    out = tmp_path / "plain.yaml"
    assert main(["k8s", "manifests", "plain", "--image", "mvu-toy:1", "-o", str(out),
                 "--workspace", str(manager.workspace.path)]) == 0
    assert [d["kind"] for d in yaml.safe_load_all(out.read_text())][0] == "Secret"


def test_the_bundle_installs_in_a_clean_venv_and_serves(services, tmp_path, cat_jpeg):
    manager, _ = services
    folder = write_bundle(manager, "plain", tmp_path / "bundle")
    dockerfile = (folder / "Dockerfile").read_text()
    python = ".".join(map(str, sys.version_info[:3]))
    assert f"FROM python:{python}-slim" in dockerfile and "USER mvu" in dockerfile and "HEALTHCHECK" in dockerfile
    assert (folder / "models" / "toy-1.mvu").read_bytes() == manager.registry.package_path(
        manager.registry.get("toy", 1)).read_bytes()
    requirements = (folder / "requirements.txt").read_text().split()
    assert all("==" in r for r in requirements) and any(r.startswith("numpy==") for r in requirements)
    with pytest.raises(WorkspaceError, match="not empty"):
        write_bundle(manager, "plain", folder)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    wheel, = (folder / "wheels").glob("mvu-*.whl")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True)
    ready = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = subprocess.Popen([str(venv / "bin" / "mvu"), "serve", f"toy@1={folder / 'models' / 'toy-1.mvu'}",
                               "--port", "0", "--grpc-port", "-1", "--ready-file", str(ready)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        port = json.loads(ready.read_text())["http_port"]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/score/toy", data=cat_jpeg)
        with urllib.request.urlopen(request, timeout=30) as response:
            assert len(json.loads(response.read())["top"]) == 5
    finally:
        server.terminate()
        server.wait(10)


def test_without_a_container_engine_the_bundle_waits_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_module.shutil, "which", lambda name: None)
    with pytest.raises(WorkspaceError, match="no docker or podman daemon answers here; the bundle is ready in"):
        build_image(tmp_path, "mvu-toy:latest")
