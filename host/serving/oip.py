"""The Open Inference Protocol (KServe v2) apart from its encodings: what its HTTP and gRPC forms share."""

from __future__ import annotations

from mvu.host import __version__
from mvu.host.serving.errors import ServingError
from mvu.host.serving.repository import ModelRepository

__all__ = ["OUTPUT_PARAMETERS", "check_output_parameters", "classification", "model_metadata", "server_metadata"]

#: The parameters a requested output may have: the classification extension's and the binary data extension's.
OUTPUT_PARAMETERS = ("classification", "binary_data")


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


def check_output_parameters(output: str, names) -> None:
    """400 for a parameter of a requested output that is not one of :data:`OUTPUT_PARAMETERS` (a misspelt
    classification would otherwise be ignored, and the client get all the scores)."""
    unknown = sorted(set(names) - set(OUTPUT_PARAMETERS))
    if unknown:
        hint = " (tritonclient's class_count is sent as 'classification')" if "class_count" in unknown else ""
        raise ServingError(400, f"output {output!r}: unknown parameter {unknown[0]!r}{hint}; an output takes "
                                f"{' and '.join(map(repr, OUTPUT_PARAMETERS))}")
