"""The Open Inference Protocol (KServe v2) apart from its encodings: what its HTTP and gRPC forms share."""

from __future__ import annotations

from mvu.host import __version__
from mvu.host.serving.errors import ServingError
from mvu.host.serving.repository import ModelRepository

__all__ = ["classification", "model_metadata", "server_metadata"]


def server_metadata(extensions: list[str]) -> dict:
    """The server's name, version and the protocol extensions a transport supports."""
    return {"name": "mvu", "version": __version__, "extensions": extensions}


def model_metadata(repository: ModelRepository, name: str, version: str | None) -> dict:
    """A model version's metadata; asked without a version, the newest's, listing every version."""
    model = repository.get(name, version)
    metadata = model.metadata()
    if not version:
        metadata["versions"] = [m.version for m in repository.versions(name)]
    return metadata


def classification(output: str, value) -> int:
    """The classification extension's parameter of an output: how many top classes (0: the scores)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ServingError(400, f"output {output!r}: classification must be an integer")
    return value
