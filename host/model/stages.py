"""A package as a pipeline of stages: preprocessing (host) -> featurizer -> head.

The featurizer ends at the tensor the classifier head reads (the input of the model's last fully connected
layer); its output is what transfer learning trains on and what ``mvu serve --features`` returns. A model
without such a head is one ``network`` stage. Each stage says where its layers run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mvu.host.model.quantized import VIEW, Layer, QuantizedModel

__all__ = ["HEAD_KINDS", "Stage", "model_stages", "stages_from_manifest", "layers_up_to", "head_input",
           "features_stage"]

#: Layer kinds that are a classifier head.
HEAD_KINDS = ("fc", "fc_quantized")


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: its tensors, and how many of its layers run on the accelerator and the host
    (``placement``: "host", "accelerator" or "mixed")."""

    name: str
    input: str
    output: str
    accelerator_layers: int
    host_layers: int

    @property
    def placement(self) -> str:
        if not self.accelerator_layers:
            return "host"
        return "mixed" if self.host_layers else "accelerator"

    def to_dict(self) -> dict:
        return asdict(self) | {"placement": self.placement}


def layers_up_to(model: QuantizedModel, tensor: str) -> list[Layer]:
    """The layers that ``tensor`` depends on, in model order."""
    producers = {layer.output: layer for layer in model.layers}
    needed, pending = set(), [tensor]
    while pending:
        name = pending.pop()
        if name in producers and producers[name].name not in needed:
            needed.add(producers[name].name)
            pending += producers[name].inputs
    return [layer for layer in model.layers if layer.name in needed]


def head_input(model: QuantizedModel) -> str | None:
    """The tensor the last classifier layer reads, or None for a model without one."""
    heads = [layer for layer in model.layers if layer.kind in HEAD_KINDS]
    return heads[-1].inputs[0] if heads else None


def _stage(name: str, input: str, output: str, layers: list[Layer]) -> Stage:
    """A stage's layer counts; views (no work, no bytes moved) count on neither side."""
    accelerator = sum(layer.placement == "accelerator" for layer in layers)
    return Stage(name, input, output, accelerator, sum(layer.placement not in ("accelerator", VIEW) for layer in layers))


def model_stages(model: QuantizedModel, features: str | None = None) -> list[Stage]:
    """The stages of ``model`` cut at ``features`` (default: the head's input): preprocessing, then the
    featurizer and the head, or one ``network`` stage when there is no head to cut at."""
    stages = [Stage("preprocessing", "image", model.input, 0, 0)]
    cut = features or head_input(model)
    if cut is None or cut == model.input:
        return stages + [_stage("network", model.input, model.output, model.layers)]
    featurizer = layers_up_to(model, cut)
    names = {layer.name for layer in featurizer}
    head = [layer for layer in model.layers if layer.name not in names]
    return stages + [_stage("featurizer", model.input, cut, featurizer),
                     _stage("head", cut, model.output, head)]


def stages_from_manifest(model: QuantizedModel, entries: list[dict] | None) -> list[Stage]:
    """The manifest's stages, or those of the model for a package written before stages were recorded."""
    if not entries:
        return model_stages(model)
    features = next((entry.get("output") for entry in entries if entry.get("name") == "featurizer"), None)
    if features is not None and features not in {layer.output for layer in model.layers}:
        raise ValueError(f"its featurizer stage ends at {features!r}, which no layer of the model produces")
    return model_stages(model, features)


def features_stage(stages: list[Stage]) -> Stage | None:
    return next((stage for stage in stages if stage.name == "featurizer"), None)
