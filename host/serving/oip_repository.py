"""Triton's extensions of the Open Inference Protocol about models, apart from their encodings: the model
repository (index, load, unload), model configuration and inference statistics.

Answers are the JSON of Triton's messages (``ModelConfig``, ``ModelStatistics``); the gRPC form parses the same
dictionaries into the messages.
"""

from __future__ import annotations

from mvu.host.serving.errors import ServingError
from mvu.host.serving.repository import ModelRepository
from mvu.host.serving.served_model import IMAGES_INPUT, TENSOR_INPUT, ServedModel

__all__ = ["EXTENSIONS", "check_repository_parameters", "model_config", "model_statistics"]

EXTENSIONS = ["model_repository", "model_repository(unload_dependents)", "model_configuration", "statistics"]

#: The parameters of a load and an unload (Triton's load also takes a configuration and files that replace the
#: model's; this server loads a model's versions from its repository as they are).
_PARAMETERS: dict[str, dict[str, type]] = {"load": {}, "unload": {"unload_dependents": bool}}


def check_repository_parameters(action: str, parameters: dict) -> None:
    """400 for a parameter that ``action`` (load or unload) does not take, or of the wrong type."""
    for name, value in parameters.items():
        kind = _PARAMETERS[action].get(name)
        if kind is None:
            takes = ", ".join(map(repr, _PARAMETERS[action])) or "none: models load from the repository as they are"
            raise ServingError(400, f"{action}: unknown parameter {name!r}; its parameters: {takes}")
        if not isinstance(value, kind):
            raise ServingError(400, f"{action}: parameter {name!r} must be {kind.__name__}")


def model_config(model: ServedModel) -> dict:
    """Triton's ``ModelConfig`` of a version: with batching, dims leave out the batch dimension."""
    return {"name": model.name, "platform": f"mvu_{model.backend.name}", "backend": "mvu",
            "version_policy": {"all": {}}, "max_batch_size": model.limits.max_batch_size,
            "input": [{"name": IMAGES_INPUT, "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}},
                      {"name": TENSOR_INPUT, "data_type": "TYPE_FP32", "dims": model.input_shape[1:]}],
            "output": [{"name": name, "data_type": "TYPE_FP32", "dims": shape[1:]} for name, shape in model.outputs.items()],
            "dynamic_batching": {"max_queue_delay_microseconds": round(model.limits.max_queue_delay * 1e6)}}


def model_statistics(repository: ModelRepository, name: str, version: str | None) -> dict:
    """Triton's statistics of a version, of every version of a model (no version), or of every model (no name)."""
    if not name:
        models = list(repository)
    else:
        models = [repository.get(name, version)] if version else repository.versions(name)
    return {"model_stats": [model.statistics.to_dict(model.name, model.version) for model in models]}
