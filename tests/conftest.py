"""Shared fixtures: small hardware configurations and executors built once per session."""

import pytest

from mvu.hdl.contract.config import HardwareConfig

#: Small enough to build in seconds, odd enough to catch tiling bugs.
TINY = HardwareConfig(rows=4, cols=4, act_depth=64, wgt_depth=32, acc_depth=64, mem_bytes=4)
#: Rows and columns differ, entries span several beats.
NARROW = HardwareConfig(rows=8, cols=16, act_depth=128, wgt_depth=64, acc_depth=128, mem_bytes=4)


@pytest.fixture(params=[True, False], ids=["plan", "interpreter"])
def plan(request, monkeypatch) -> bool:
    """Run a test with the reference executor's execution plans, and again with the interpreter alone."""
    if not request.param:
        from mvu.host.executors import reference

        monkeypatch.setattr(reference, "build_plan", lambda *args, **kwargs: None)
    return request.param


def cpu_flags() -> set[str]:
    """The processor's feature flags as Linux lists them (empty where /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return set(cpuinfo.read().split())
    except OSError:
        return set()


@pytest.fixture(scope="session")
def tiny_config() -> HardwareConfig:
    return TINY


@pytest.fixture(scope="session")
def verilator_executors():
    """Verilator executors by configuration, built (or loaded from the cache) once."""
    from mvu.sim.verilator_executor import VerilatorExecutor

    cache = {}

    def get(config: HardwareConfig, memory_model=None):
        key = (config, memory_model)
        if key not in cache:
            cache[key] = VerilatorExecutor(config, memory_model) if memory_model else VerilatorExecutor(config)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def toy_package_path(tmp_path_factory):
    """The toy recipe (32x32 input, 1000 ImageNet classes, seeded weights) compiled to a .mvu file."""
    from mvu.hdl.contract.config import HardwareConfig
    from mvu.host.compiler.recipes import compile_source
    from mvu.host.model.package import save_package

    path = tmp_path_factory.mktemp("toy") / "toy.mvu"
    return save_package(compile_source("toy", config=HardwareConfig(), progress=False), path)


class ServerProcess:
    """A running `mvu serve`: its URL, gRPC port and log files."""

    def __init__(self, process, http_port: int, grpc_port, scheme: str, folder):
        self.process, self.http_port, self.grpc_port = process, http_port, grpc_port
        self.url = f"{scheme}://127.0.0.1:{http_port}"
        self.folder = folder

    @property
    def stderr(self) -> str:
        return (self.folder / "stderr.txt").read_text()

    @property
    def access_log(self) -> str:
        return (self.folder / "stdout.txt").read_text()

    def stop(self) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """``start_server(*args)`` runs `mvu serve *args` on free ports and waits until it answers."""
    import json
    import subprocess
    import sys
    import time

    servers = []

    def start(*args: str, tls: bool = False, timeout: float = 60.0) -> ServerProcess:
        folder = tmp_path_factory.mktemp("server")
        ready = folder / "ready.json"
        command = [sys.executable, "-m", "mvu.host.tools.cli", "serve", *map(str, args), "--port", "0",
                   "--ready-file", str(ready)]
        if "--grpc-port" not in args:
            command += ["--grpc-port", "0"]
        process = subprocess.Popen(command, stdout=open(folder / "stdout.txt", "w"),
                                   stderr=open(folder / "stderr.txt", "w"))
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if process.poll() is not None:
                raise RuntimeError(f"mvu serve exited with {process.returncode}: "
                                   f"{(folder / 'stderr.txt').read_text()}")
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("mvu serve did not start in time")
            time.sleep(0.05)
        ports = json.loads(ready.read_text())
        server = ServerProcess(process, ports["http_port"], ports["grpc_port"], "https" if tls else "http", folder)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A CA and a server certificate for 127.0.0.1 and localhost signed by it: (ca.pem, cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mvu test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="session")
def cat_jpeg() -> bytes:
    """scikit-image's cat photo as JPEG bytes."""
    import io

    from PIL import Image

    from mvu.host.compiler.recipes import demo_photos

    out = io.BytesIO()
    Image.open(demo_photos()[0]).convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="session")
def small_detector_path(tmp_path_factory):
    """SSD300's structure at an eighth of its channels (a server warms it up in seconds), 6 classes."""
    from mvu.hdl.contract.config import HardwareConfig
    from mvu.host.compiler.detection import compile_detector
    from mvu.host.model.package import save_package
    from mvu.host.runtime.preprocess import TORCHVISION
    from mvu.models.ssd import ssd300_vgg16

    package = compile_detector(ssd300_vgg16(width=8, classes=6), config=HardwareConfig(), name="ssd",
                               preprocessing={**TORCHVISION.to_dict(), "resize": 300, "crop": 300}, labels=None,
                               progress=False)
    return save_package(package, tmp_path_factory.mktemp("ssd") / "ssd.mvu")
