"""The models a server holds, by name and version, and how a running server loads and unloads them.

Versions come from packages named on the command line (``NAME@VERSION=PATH``) and from a model repository folder
in Triton's layout (:mod:`.model_folder`). :meth:`ModelRepository.load` reads a model's versions again: the
versions present and not loaded are loaded and warmed up (their programs built) while the others answer, and only
then take requests; the loaded versions no longer present are unloaded. A request without a version goes to the
newest READY version. Unloading takes a version out of routing at once and waits for its requests in flight
before it closes the version's executor, so a rolling update (add version N+1, load; remove version N, load)
fails no request. A version's package is read once: a changed model is a new version.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mvu.host.model.package import ModelPackage, PackageError, load_package
from mvu.host.serving.backend import ServingBackend
from mvu.host.serving.errors import ServingError
from mvu.host.serving.metrics import ServingMetrics
from mvu.host.serving.model_folder import MODEL_NAME, folder_models, folder_versions
from mvu.host.serving.served_model import ServedModel, ServingLimits
from mvu.host.serving.tensors import InferenceRequest, InferenceResult

__all__ = ["ModelSpec", "ModelRepository", "version_key"]

log = logging.getLogger("mvu.host.serving")

#: How often a load looks whether new versions are warm, and an unload whether requests in flight are answered.
_POLL_SECONDS = 0.005


@dataclass(frozen=True)
class ModelSpec:
    """``[NAME[@VERSION]=]PATH`` from the command line."""

    path: Path
    name: str | None = None
    version: str = "1"

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        label, sep, path = text.rpartition("=")
        if not sep:
            return cls(Path(text))
        name, _, version = label.partition("@")
        for what, value in (("name", name), ("version", version or "1")):
            if not MODEL_NAME.match(value):
                raise ValueError(f"{text}: bad model {what} {value!r} (letters, digits, '_', '.', '-')")
        return cls(Path(path), name, version or "1")


def version_key(version: str):
    """Versions in order: numbers by value, then names."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


class ModelRepository:
    """Models by name and version on one backend; a request without a version gets the newest ready one."""

    def __init__(self, backend: ServingBackend | None = None, limits: ServingLimits | None = None, *,
                 folder: Path | None = None, metrics: ServingMetrics | None = None):
        self.backend, self.limits, self.folder = backend or ServingBackend(), limits or ServingLimits(), folder
        self.metrics = metrics or ServingMetrics()
        self._models: dict[str, dict[str, ServedModel]] = {}  # loaded versions: warming up, ready or failed
        self._packages: dict[str, dict[str, Path]] = {}  # the command line's models: name -> version -> package
        self._failed: dict[tuple[str, str], str] = {}  # versions a load could not load: why
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # one load or unload per model
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mvu-preprocess")

    # Loading at start -----------------------------------------------------------------------------------------

    def add(self, spec: ModelSpec) -> ServedModel:
        """A package from the command line (its executor builds in the background); errors name the file."""
        package = load_package(spec.path)
        name = spec.name or package.name
        if not MODEL_NAME.match(name):
            raise ValueError(f"{spec.path}: model name {name!r} is not usable in a URL; give one as NAME=PATH")
        if self.folder is not None and folder_versions(self.folder, name) is not None:
            raise ValueError(f"{spec.path}: model {name!r} is also in the model repository {self.folder}")
        if spec.version in self._models.get(name, {}):
            raise ValueError(f"{spec.path}: model {name!r} version {spec.version} is already served")
        self._packages.setdefault(name, {})[spec.version] = spec.path
        return self._serve(name, spec.version, package)

    def add_folder(self) -> list[ServedModel]:
        """Every version in the model repository folder; errors name the file."""
        models = []
        for name in folder_models(self.folder):
            for version, path in sorted(folder_versions(self.folder, name).items(), key=lambda v: version_key(v[0])):
                models.append(self._serve(name, version, load_package(path)))
        return models

    def _serve(self, name: str, version: str, package: ModelPackage) -> ServedModel:
        model = ServedModel(name, version, package, self.backend, self.limits, self.metrics, self._pool)
        self._models.setdefault(name, {})[version] = model
        self.metrics.queued.labels(name, version).set_function(lambda: model.scheduler.queued_images)
        return model

    # Loading and unloading while serving ----------------------------------------------------------------------

    async def load(self, name: str) -> None:
        """Read model ``name``'s versions again: load and warm up those not loaded, then unload those no longer
        present; 404 for a model the repository does not have, 400 when a version fails to load (the others
        serve on)."""
        await _to_the_end(self._load(name))

    async def _load(self, name: str) -> None:
        async with self._locks[name]:
            present = await asyncio.to_thread(self._present, name)
            if present is None:
                raise ServingError(404, f"no model {name!r} in the model repository; served: {self._names()}")
            loaded, started = set(self._models.get(name, {})), []
            for version, path in sorted(present.items(), key=lambda v: version_key(v[0])):
                if version not in loaded and (model := await self._open(name, version, path)) is not None:
                    started.append(model)
            await self._warm_up(started)
            gone = [version for version in self._models.get(name, {}) if version not in present]
            await self._unload([self._models[name].pop(version) for version in gone])
            if not self._models.get(name):
                self._models.pop(name, None)
            self._failed = {key: why for key, why in self._failed.items() if key[0] != name or key[1] in present}
            failures = [f"version {version} {why}" for (model, version), why in sorted(self._failed.items())
                        if model == name]
            if failures or not present:
                raise ServingError(400, f"model {name!r}: " + ("; ".join(failures) or "no versions to load"))

    async def _open(self, name: str, version: str, path: Path) -> ServedModel | None:
        """Start version ``version`` from ``path`` (LOADING until its executor is warm); None if its package
        cannot be read, which is recorded."""
        try:
            package = await asyncio.to_thread(load_package, path)
        except PackageError as error:
            self._failed[name, version] = f"failed to load: {_package_error(error, path)}"
            return None
        self._failed.pop((name, version), None)
        return self._serve(name, version, package)

    async def _warm_up(self, started: list[ServedModel]) -> None:
        """Wait until the versions ``started`` are READY; those that fail leave routing, and say why."""
        while not all(model.ready or model.scheduler.failed for model in started):
            await asyncio.sleep(_POLL_SECONDS)
        for model in started:
            if model.scheduler.failed:  # its worker thread has ended
                self._failed[model.name, model.version] = model.state[1]
                del self._models[model.name][model.version]
                self.metrics.queued.remove(model.name, model.version)
                log.warning("model %s version %s %s", model.name, model.version, model.state[1])
            else:
                log.info("model %s version %s loaded", model.name, model.version)

    async def unload(self, name: str) -> None:
        """Unload every version of model ``name`` once its requests in flight are answered."""
        await _to_the_end(self._unload_model(name))

    async def _unload_model(self, name: str) -> None:
        async with self._locks[name]:
            if name not in self._models and await asyncio.to_thread(self._present, name) is None:
                raise ServingError(404, f"unknown model {name!r}; served: {self._names()}")
            self._failed = {key: why for key, why in self._failed.items() if key[0] != name}
            await self._unload(list(self._models.pop(name, {}).values()))

    async def _unload(self, models: list[ServedModel]) -> None:
        """Close versions already out of routing once no request is in flight on them."""
        while any(model.in_flight for model in models):
            await asyncio.sleep(_POLL_SECONDS)
        for model in models:
            model.scheduler.close()
            self.metrics.queued.remove(model.name, model.version)
            log.info("model %s version %s unloaded", model.name, model.version)

    def _present(self, name: str) -> dict[str, Path] | None:
        """The versions of model ``name`` where it comes from, None if it comes from nowhere."""
        if name in self._packages:
            return self._packages[name]
        return folder_versions(self.folder, name) if self.folder is not None else None

    async def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: every version with its state and why, and the models not loaded."""
        names = set(self._packages) | set(await asyncio.to_thread(folder_models, self.folder) if self.folder else ())
        entries = [{"name": model.name, "version": model.version, "state": model.state[0], "reason": model.state[1]}
                   for model in self]
        entries += [{"name": name, "version": version, "state": "UNAVAILABLE", "reason": why}
                    for (name, version), why in self._failed.items()]
        listed = {entry["name"] for entry in entries}
        entries += [{"name": name, "version": "", "state": "UNAVAILABLE", "reason": "not loaded"}
                    for name in names - listed]
        entries.sort(key=lambda entry: (entry["name"], version_key(entry["version"])))
        return [entry for entry in entries if entry["state"] == "READY" or not ready_only]

    # Routing --------------------------------------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """Version ``version`` of model ``name``, or without one the newest ready version (the newest of all
        while none is ready)."""
        versions = self._models.get(name)
        if not versions:
            raise ServingError(404, f"unknown model {name!r}; served: {self._names()}")
        if version is None or version == "":
            ready = [v for v, model in versions.items() if model.ready] or list(versions)
            return versions[max(ready, key=version_key)]
        if version not in versions:
            raise ServingError(404, f"model {name!r} has no version {version!r}; versions: "
                                    f"{', '.join(sorted(versions, key=version_key))}")
        return versions[version]

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Run ``request`` on the version it names, or the newest ready one, chosen now: a request whose body took
        a while to arrive goes to the versions loaded by then."""
        return await self.get(request.model_name, request.model_version).infer(request)

    def only(self) -> ServedModel:
        """The model of a server that serves exactly one (for URLs that name none)."""
        if len(self._models) != 1:
            raise ServingError(404, f"this server has {len(self._models)} models; name one: {self._names()}")
        return self.get(next(iter(self._models)))

    def _names(self) -> str:
        return ", ".join(sorted(self._models)) or "none"

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def versions(self, name: str) -> list[ServedModel]:
        self.get(name)
        return [self._models[name][v] for v in sorted(self._models[name], key=version_key)]

    def __iter__(self):
        for name in sorted(self._models):
            yield from self.versions(name)

    @property
    def ready(self) -> bool:
        """Every model has a ready version: a version warming up during a load does not take the server out of
        a load balancer's rotation."""
        return all(any(model.ready for model in versions.values()) for versions in self._models.values())

    def close(self) -> None:
        for model in self:
            model.scheduler.close()
        self._pool.shutdown(wait=False)


async def _to_the_end(work) -> None:
    """Run coroutine ``work`` to its end even when the caller stops waiting (a gRPC client's deadline passed): a
    load or unload cut short would leave versions half loaded."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())  # an error nobody awaits any more
    await asyncio.shield(task)


def _package_error(error: PackageError, path: Path) -> str:
    """Why a version's package could not be read, in the repository's terms: without the server's path or the
    words of the zip and JSON libraries."""
    text = str(error).removeprefix(f"{path}: ")
    if text == "no such file":
        return f"its folder has no {path.name}"
    if text.startswith("not an mvu model package"):
        return f"its {path.name} is not an mvu model package"
    return f"its {path.name}: {text}"
