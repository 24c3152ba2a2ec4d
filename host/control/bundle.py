"""Deploy bundles: a folder from which a container image of one service builds (Dockerfile, the mvu
wheel, its pinned dependencies, the service's packages), and the build itself with docker or podman."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from mvu.host.control.services import ServiceManager
from mvu.host.control.wheel import write_wheel
from mvu.host.control.workspace import WorkspaceError

__all__ = ["write_bundle", "build_image", "serve_arguments", "KEYS_PATH", "TLS_FOLDER", "HTTP_PORT", "GRPC_PORT"]

#: Where a container finds what is mounted into it (a Kubernetes Secret, or `docker run -v`).
KEYS_PATH = "/etc/mvu/keys/keys.json"
TLS_FOLDER = "/etc/mvu/tls"
HTTP_PORT, GRPC_PORT = 8000, 8001
_MODELS = "/opt/mvu/models"


def _requirement_name(requirement: str) -> str:
    for separator in "<>=!~[; ":
        requirement = requirement.split(separator)[0]
    return requirement


def _pinned_requirements() -> list[str]:
    """mvu's dependencies at the versions installed here, the ones it was tested with."""
    names = [_requirement_name(r) for r in metadata.requires("mvu") or [] if "extra ==" not in r]
    return [f"{name}=={metadata.version(name)}" for name in names]


def serve_arguments(manager: ServiceManager, name: str) -> list[str]:
    """`mvu serve` arguments inside the container for service ``name``."""
    service = manager.get(name)
    models = [f"{ref.replace(':', '@')}={_MODELS}/{ref.replace(':', '-')}.mvu" for ref in service.models]
    tls = ["--tls-cert", f"{TLS_FOLDER}/tls.crt", "--tls-key", f"{TLS_FOLDER}/tls.key"] if service.tls_cert else \
        ["--allow-insecure-keys"]  # plain HTTP inside the cluster: TLS, if any, ends in front of the pods
    return ["serve", *models, "--host", "0.0.0.0", "--port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT),
            "--backend", service.backend, "--keys", KEYS_PATH, "--open-health", *tls]


def _dockerfile(arguments: list[str], scheme: str) -> str:
    python = ".".join(map(str, sys.version_info[:3]))
    command = ", ".join(f'"{a}"' for a in ["mvu", *arguments])
    return f"""# A container of one mvu service; keys and TLS are mounted, not baked in.
FROM python:{python}-slim
RUN useradd --system --uid 10001 --home-dir /opt/mvu mvu && mkdir -p /opt/mvu && chown mvu /opt/mvu
COPY requirements.txt wheels/ /tmp/mvu/
RUN pip install --no-cache-dir -r /tmp/mvu/requirements.txt /tmp/mvu/*.whl && rm -rf /tmp/mvu
COPY models/ {_MODELS}/
USER mvu
ENV MVU_CACHE=/opt/mvu/cache NUMBA_CACHE_DIR=/opt/mvu/cache/numba
EXPOSE {HTTP_PORT} {GRPC_PORT}
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \\
  CMD python -c "import ssl, urllib.request; urllib.request.urlopen('{scheme}://127.0.0.1:{HTTP_PORT}/v2/health/ready', context=ssl._create_unverified_context(), timeout=2)"
ENTRYPOINT [{command}]
"""


def write_bundle(manager: ServiceManager, name: str, folder: Path) -> Path:
    """Writes service ``name``'s bundle into ``folder``: Dockerfile, requirements.txt, wheels/, models/."""
    service = manager.get(name)
    if folder.exists() and any(folder.iterdir()):
        raise WorkspaceError(f"{folder}: not empty; name a new folder for the bundle")
    write_wheel(folder / "wheels")
    (folder / "requirements.txt").write_text("\n".join(_pinned_requirements()) + "\n")
    (folder / "models").mkdir()
    for reference in service.models:
        model, version = reference.split(":")
        manager.registry.download(model, int(version), folder / "models" / f"{model}-{version}.mvu")
    scheme = "https" if service.tls_cert else "http"
    (folder / "Dockerfile").write_text(_dockerfile(serve_arguments(manager, name), scheme))
    return folder


def _engine() -> str | None:
    """docker or podman, if one is installed and its daemon answers."""
    for engine in ("docker", "podman"):
        if shutil.which(engine) and subprocess.run([engine, "info"], capture_output=True).returncode == 0:
            return engine
    return None


def build_image(folder: Path, tag: str) -> str:
    """Builds the bundle in ``folder`` as image ``tag``; returns the engine's name."""
    engine = _engine()
    if engine is None:
        raise WorkspaceError(f"no docker or podman daemon answers here; the bundle is ready in {folder}: "
                             f"build it where one runs with `docker build -t {tag} {folder}`")
    result = subprocess.run([engine, "build", "-t", tag, str(folder)], capture_output=True, text=True)
    if result.returncode != 0:
        raise WorkspaceError(f"{engine} build failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return engine
