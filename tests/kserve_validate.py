"""Checks KServe resources with the KServe SDK's own models; run by the Python of a venv that has `kserve`.

The KServe SDK pins protobuf < 7 and mvu needs protobuf 7, so this runs apart, in a venv of its own
(tests/test_deploy_bundle.py makes one in the build cache):
``python tests/kserve_validate.py < manifests.yaml`` reads YAML documents and, for each ServingRuntime and
InferenceService, builds the SDK's model from it (client-side validation: required fields, types, enums)
and serializes it again. A field the SDK does not know is lost on that round trip, so it is reported too.
Prints one JSON object: ``{"checked": [kinds], "errors": [messages]}``; exits 1 when there are errors.
"""

from __future__ import annotations

import json
import re
import sys

import kserve.models
import kubernetes.client.models
import yaml
from kserve.api_client import ApiClient

#: KServe kind -> the SDK's model class name
MODELS = {"ServingRuntime": "V1alpha1ServingRuntime", "InferenceService": "V1beta1InferenceService"}
_PRIMITIVES = {"str": str, "int": int, "float": float, "bool": bool, "object": object, "datetime": str, "date": str}
_LIST = re.compile(r"^[Ll]ist\[(.*)\]$")
_DICT = re.compile(r"^(?:dict\(|Dict\[)str, (.*)[)\]]$")


def _model_class(name: str):
    """A model class of KServe's SDK, or of the Kubernetes client that KServe's models refer to."""
    for module in (kserve.models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    raise TypeError(f"no model class {name}")


def build(data, kind: str):
    """``data`` as the SDK's type ``kind`` (its openapi type string); constructing a model validates it."""
    if data is None:
        return None
    if (found := _LIST.match(kind)) is not None:
        if not isinstance(data, list):
            raise TypeError(f"expected a list, got {data!r}")
        return [build(item, found.group(1)) for item in data]
    if (found := _DICT.match(kind)) is not None:
        if not isinstance(data, dict):
            raise TypeError(f"expected a mapping, got {data!r}")
        return {key: build(value, found.group(1)) for key, value in data.items()}
    if kind in _PRIMITIVES:
        expected = _PRIMITIVES[kind]
        if expected is not object and not isinstance(data, expected) or (expected is int and isinstance(data, bool)):
            raise TypeError(f"expected {kind}, got {data!r}")
        return data
    model = _model_class(kind)
    if not isinstance(data, dict):
        raise TypeError(f"{kind}: expected a mapping, got {data!r}")
    fields = {attribute: build(data.get(key), model.openapi_types[attribute])
              for attribute, key in model.attribute_map.items()}
    return model(**fields)


def _lost(original, again, path: str) -> list[str]:
    """Paths in ``original`` that the round trip dropped or changed."""
    if isinstance(original, dict):
        if not isinstance(again, dict):
            return [f"{path}: became {type(again).__name__}"]
        return [lost for key, value in original.items()
                for lost in (_lost(value, again[key], f"{path}.{key}") if key in again
                             else [f"{path}.{key}: not a field the KServe SDK knows"])]
    if isinstance(original, list):
        if not isinstance(again, list) or len(again) != len(original):
            return [f"{path}: the list changed"]
        return [lost for index, (a, b) in enumerate(zip(original, again)) for lost in _lost(a, b, f"{path}[{index}]")]
    return [] if original == again else [f"{path}: {original!r} became {again!r}"]


def check(documents: list[dict]) -> dict:
    client, checked, errors = ApiClient(), [], []  # the SDK's serializer, for the round trip
    for document in documents:
        kind = document.get("kind")
        if kind not in MODELS:
            continue
        name = f"{kind} {document.get('metadata', {}).get('name', '?')}"
        try:
            model = build(document, MODELS[kind])
        except (ValueError, TypeError, AttributeError) as error:
            errors.append(f"{name}: {error}")
            continue
        errors += [f"{name}: {lost}" for lost in _lost(document, client.sanitize_for_serialization(model), "")]
        checked.append(kind)
    return {"checked": checked, "errors": errors}


if __name__ == "__main__":
    report = check([d for d in yaml.safe_load_all(sys.stdin) if d])
    print(json.dumps(report))
    sys.exit(1 if report["errors"] else 0)
