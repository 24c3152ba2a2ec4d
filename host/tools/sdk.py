"""The Python SDK: workspaces, registered models and deployed services, in the shape users of hosted
model services know (register -> deploy -> consume -> delete).

    from mvu.host.tools.sdk import Model, PredictionClient, Service, Workspace

    ws = Workspace("~/.mvu")
    model = Model.register(ws, "lite0.mvu", "lite0", tags={"stage": "dev"})
    service = Service.deploy(ws, "classifier", [model])
    print(service.run("cat.jpg")["top"][0])
    primary, secondary = service.get_keys()
    service.delete(); model.delete()
"""

from __future__ import annotations

from pathlib import Path

from mvu.host.control.registry import ModelRegistry
from mvu.host.control.services import ServiceManager
from mvu.host.control.workspace import Workspace as _Workspace
from mvu.host.control.workspace import WorkspaceError
from mvu.host.tools.client import ScoringClient
from mvu.host.tools.prediction_client import PredictionClient, PredictionError

__all__ = ["Workspace", "Model", "Service", "PredictionClient", "PredictionError", "WorkspaceError"]


class Workspace(_Workspace):
    """A workspace folder (created if missing); ``path`` defaults to ``$MVU_WORKSPACE`` or ``~/.mvu``."""

    def __init__(self, path: str | Path | None = None):
        super().__init__(Path(path).expanduser() if path is not None else None)


class Model:
    """A registered model version: ``Model(ws, name)`` is the newest, ``Model(ws, name, version)`` one."""

    def __init__(self, workspace: Workspace, name: str, version: int | None = None):
        self.workspace = workspace
        self._record = ModelRegistry(workspace).get(name, version)

    @classmethod
    def register(cls, workspace: Workspace, model_path: str | Path, model_name: str, *,
                 tags: dict[str, str] | None = None, description: str = "") -> "Model":
        record = ModelRegistry(workspace).register(model_path, model_name, tags=tags, description=description)
        return cls(workspace, record.name, record.version)

    @classmethod
    def list(cls, workspace: Workspace, name: str | None = None, *, tags: dict[str, str] | None = None) -> list["Model"]:
        return [cls(workspace, v.name, v.version) for v in ModelRegistry(workspace).list(name, tags=tags)]

    name = property(lambda self: self._record.name)
    version = property(lambda self: self._record.version)
    tags = property(lambda self: dict(self._record.tags))
    description = property(lambda self: self._record.description)
    sha256 = property(lambda self: self._record.sha256)
    manifest = property(lambda self: self._record.manifest)
    record = property(lambda self: self._record, doc="the registry's record of this version")

    def __repr__(self) -> str:
        return f"Model({self._record.reference})"

    def download(self, target: str | Path = ".") -> Path:
        return ModelRegistry(self.workspace).download(self.name, self.version, target)

    def add_tags(self, tags: dict[str, str]) -> None:
        self._record = ModelRegistry(self.workspace).tag(self.name, self.version, tags)

    def remove_tags(self, keys: list[str]) -> None:
        self._record = ModelRegistry(self.workspace).untag(self.name, self.version, keys)

    def delete(self) -> None:
        """Refused while a service serves this version: delete the service first."""
        ModelRegistry(self.workspace).delete(self.name, self.version)


class Service:
    """A deployed service: ``Service(ws, name)`` finds an existing one."""

    def __init__(self, workspace: Workspace, name: str):
        self.workspace, self.name = workspace, name
        self._manager = ServiceManager(workspace)
        self._manager.get(name)

    @classmethod
    def deploy(cls, workspace: Workspace, name: str, models: list[Model | str], *, tls_cert: str | None = None,
               tls_key: str | None = None, backend: str = "reference", port: int | None = None,
               grpc_port: int | None = None, replicas: int = 1, timeout: float = 300.0) -> "Service":
        """Starts serving ``models`` (``Model`` objects, or ``NAME[:VERSION]``) on ``replicas`` server processes
        and waits until they serve."""
        references = [m if isinstance(m, str) else m.record.reference for m in models]
        ServiceManager(workspace).create(name, references, tls_cert=tls_cert, tls_key=tls_key, backend=backend,
                                         port=port, grpc_port=grpc_port, replicas=replicas, timeout=timeout)
        return cls(workspace, name)

    @property
    def state(self) -> str:
        return self._manager.get(self.name).state

    @property
    def scoring_uri(self) -> str:
        return self._manager.get(self.name).endpoint

    @property
    def grpc_port(self) -> int:
        return self._manager.get(self.name).grpc_port

    @property
    def models(self) -> list[str]:
        return self._manager.get(self.name).models

    def __repr__(self) -> str:
        return f"Service({self.name!r}, {self.state})"

    def wait_for_deployment(self, timeout: float = 300.0) -> None:
        self._manager.wait_for_deployment(self.name, timeout)

    def get_keys(self) -> tuple[str, str]:
        """(primary, secondary)."""
        keys = self._manager.keys(self.name)
        return keys["primary"], keys["secondary"]

    def regenerate_key(self, key_type: str) -> str:
        """A new ``"primary"`` or ``"secondary"`` key; the old one stops working."""
        return self._manager.regenerate_key(self.name, key_type)

    def get_logs(self, lines: int = 50) -> str:
        return self._manager.logs(self.name, lines)

    def run(self, image: str | Path | bytes, *, top: int = 5, model: str | None = None,
            cacert: str | Path | None = None) -> dict:
        """Classifies one image (a path or its bytes) with the primary key; the server's answer: ``top``
        (``class``, ``label``, ``score``), ``model_name``, ``model_version``, ``cycles``, ``modelled_ms``.
        Under TLS the service's certificate is trusted, or ``cacert`` (the CA that signed it)."""
        service = self._manager.get(self.name)
        with ScoringClient(service.endpoint, key=self.get_keys()[0], cacert=cacert or service.tls_cert) as client:
            return client.score_image(image, top=top, model=model)

    def prediction_client(self, *, cacert: str | Path | None = None, timeout: float = 60.0) -> PredictionClient:
        """A TF Serving gRPC client of this service with its primary key, asking its first model; under TLS it
        trusts the service's certificate, or ``cacert``."""
        service = self._manager.get(self.name)
        return PredictionClient(service.host, service.grpc_port, use_ssl=bool(service.tls_cert),
                                access_token=self.get_keys()[0], model_name=service.models[0].split(":")[0],
                                root_certificates=cacert or service.tls_cert, timeout=timeout)

    def update(self, models: list[Model | str]) -> None:
        """Moves to other versions of the served models (rolling: no request fails)."""
        self._manager.update(self.name, [m if isinstance(m, str) else m.record.reference for m in models])

    def delete(self) -> None:
        self._manager.delete(self.name)
