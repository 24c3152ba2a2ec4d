"""The control plane on the `mvu` command line: `mvu models ...`, `mvu services ...`, `mvu workspace ...`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_control_commands"]


def _registry(args: argparse.Namespace):
    from mvu.host.control.registry import ModelRegistry
    from mvu.host.control.workspace import Workspace

    return ModelRegistry(Workspace(args.workspace))


def _tags(pairs: list[str]) -> dict[str, str]:
    from mvu.host.control.workspace import WorkspaceError

    tags = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise WorkspaceError(f"--tag {pair!r}: write KEY=VALUE")
        tags[key] = value
    return tags


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _print_version(version, as_json: bool) -> None:
    if as_json:
        print(json.dumps(version.to_dict(), indent=1))
        return
    manifest = version.manifest
    print(f"{version.reference}  {_megabytes(version.size)}  sha256 {version.sha256}")
    print(f"  registered   {version.registered_at} by {version.registered_by}")
    if version.description:
        print(f"  description  {version.description}")
    print(f"  tags         {', '.join(f'{k}={v}' for k, v in version.tags.items()) or '-'}")
    print(f"  hardware     {manifest['hardware']}")
    print(f"  input        {manifest['input']['name']} {manifest['input']['shape']}, "
          f"preprocessing {json.dumps(manifest['preprocessing'])}")
    print(f"  output       {manifest['output']}: {manifest['classes']} classes "
          f"({', '.join(manifest['labels'])}{', ...' if manifest['classes'] > len(manifest['labels']) else ''})")
    print(f"  layers       {manifest['layers']} ({manifest['accelerator_layers']} on the accelerator)")


def _register(args) -> int:
    version = _registry(args).register(args.package, args.name, tags=_tags(args.tag), description=args.description)
    _print_version(version, args.json)
    return 0


def _list(args) -> int:
    from mvu.host.control.registry import parse_reference

    name = parse_reference(args.name)[0] if args.name else None
    versions = _registry(args).list(name, tags=_tags(args.tag))
    if args.json:
        print(json.dumps([v.to_dict() for v in versions], indent=1))
        return 0
    if not versions:
        print("no models registered" + (" that match" if name or args.tag else ""))
        return 0
    rows = [(v.reference, _megabytes(v.size), v.registered_at, ", ".join(f"{k}={x}" for k, x in v.tags.items()),
             v.description) for v in versions]
    header = ("MODEL", "SIZE", "REGISTERED", "TAGS", "DESCRIPTION")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _show(args) -> int:
    from mvu.host.control.registry import parse_reference

    _print_version(_registry(args).get(*parse_reference(args.model)), args.json)
    return 0


def _download(args) -> int:
    from mvu.host.control.registry import parse_reference

    print(_registry(args).download(*parse_reference(args.model), args.output))
    return 0


def _exact(reference: str) -> tuple[str, int]:
    from mvu.host.control.registry import parse_reference
    from mvu.host.control.workspace import WorkspaceError

    name, version = parse_reference(reference)
    if version is None:
        raise WorkspaceError(f"model {reference!r}: name the version, as {reference}:VERSION")
    return name, version


def _tag(args) -> int:
    _print_version(_registry(args).tag(*_exact(args.model), _tags(args.tags)), False)
    return 0


def _untag(args) -> int:
    _print_version(_registry(args).untag(*_exact(args.model), args.keys), False)
    return 0


def _delete(args) -> int:
    deleted = _registry(args).delete(*_exact(args.model))
    print(f"deleted {deleted.reference}")
    return 0


def _services(args: argparse.Namespace):
    from mvu.host.control.services import ServiceManager
    from mvu.host.control.workspace import Workspace

    return ServiceManager(Workspace(args.workspace))


def _print_service(service, as_json: bool) -> None:
    if as_json:
        print(json.dumps(service.to_dict(), indent=1))
        return
    print(f"{service.name}  {service.state}{f' ({service.detail})' if service.detail else ''}")
    print(f"  endpoint     {service.endpoint} (HTTP: KServe v2, TF Serving REST, /score)")
    print(f"  gRPC         {service.grpc_endpoint}{' over TLS' if service.tls_cert else ''}")
    print(f"  models       {', '.join(service.models)}")
    print(f"  backend      {service.backend}; {service.replicas} replica{'s' if service.replicas > 1 else ''}; "
          f"restarts {service.restarts}; created {service.created_at}")


def _print_keys(keys: dict[str, str]) -> None:
    for slot, key in keys.items():
        print(f"  {slot + ' key':<14} {key}")


def _service_create(args) -> int:
    service, keys = _services(args).create(args.name, args.model, host=args.host, port=args.port,
                                           grpc_port=args.grpc_port, backend=args.backend, tls_cert=args.tls_cert,
                                           tls_key=args.tls_key, replicas=args.replicas, timeout=args.timeout)
    if args.json:
        print(json.dumps({**service.to_dict(), "keys": keys}, indent=1))
        return 0
    _print_service(service, False)
    _print_keys(keys)
    return 0


def _service_list(args) -> int:
    services = _services(args).list()
    if args.json:
        print(json.dumps([s.to_dict() for s in services], indent=1))
    for service in [] if args.json else services:
        print(f"{service.name:<20} {service.state:<11} {service.endpoint:<28} {', '.join(service.models)}")
    if not services and not args.json:
        print("no services")
    return 0


def _service_show(args) -> int:
    manager = _services(args)
    service = manager.get(args.name)
    _print_service(service, args.json)
    if service.state == "failed" and not args.json:
        print(manager.logs(args.name, 15))
    return 0


def _service_keys(args) -> int:
    keys = _services(args).keys(args.name)
    print(json.dumps(keys, indent=1)) if args.json else _print_keys(keys)
    return 0


def _service_regenerate_key(args) -> int:
    print(_services(args).regenerate_key(args.name, args.which))
    return 0


def _service_logs(args) -> int:
    print(_services(args).logs(args.name, args.lines))
    return 0


def _service_update(args) -> int:
    _print_service(_services(args).update(args.name, args.model), False)
    return 0


def _service_delete(args) -> int:
    _services(args).delete(args.name)
    print(f"deleted service {args.name}")
    return 0


def _image_build(args) -> int:
    from mvu.host.control.bundle import build_image, write_bundle

    folder = write_bundle(_services(args), args.service, Path(args.output))
    print(f"bundle written to {folder} (Dockerfile, wheels/, requirements.txt, models/)")
    if not args.no_build:
        engine = build_image(folder, args.tag or f"mvu-{args.service}:latest")
        print(f"built image {args.tag or f'mvu-{args.service}:latest'} with {engine}")
    return 0


def _k8s_manifests(args) -> int:
    import yaml

    from mvu.host.control.kubernetes import manifests

    documents = manifests(_services(args), args.service, args.image, replicas=args.replicas,
                          max_replicas=args.max_replicas)
    text = yaml.safe_dump_all(documents, sort_keys=False)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {len(documents)} resources to {args.output}")
    else:
        print(text, end="")
    return 0


def _gc(args) -> int:
    removed = _registry(args).collect_garbage()
    print(f"removed {len(removed)} unreferenced package{'s' * (len(removed) != 1)}")
    return 0


def add_control_commands(commands) -> None:
    """Register ``models``, ``services`` and ``workspace`` on the top-level parsers."""
    from mvu.host.executors import BACKENDS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", help="the workspace folder (default: $MVU_WORKSPACE, else ~/.mvu)")

    models = commands.add_parser("models", help="the model registry: register, list, show, download, tag, delete")
    actions = models.add_subparsers(dest="action", required=True)
    register = actions.add_parser("register", parents=[common], help="register a package as a model's next version")
    register.add_argument("package", help="a compiled package (.mvu)")
    register.add_argument("--name", required=True)
    register.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    register.add_argument("--description", default="")
    register.add_argument("--json", action="store_true")
    register.set_defaults(handler=_register)
    list_ = actions.add_parser("list", parents=[common], help="registered models and versions")
    list_.add_argument("name", nargs="?", help="only this model's versions")
    list_.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only versions with this tag")
    list_.add_argument("--json", action="store_true")
    list_.set_defaults(handler=_list)
    show = actions.add_parser("show", parents=[common], help="one version's record and manifest")
    show.add_argument("model", metavar="NAME[:VERSION]")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_show)
    download = actions.add_parser("download", parents=[common], help="copy a version's package out")
    download.add_argument("model", metavar="NAME[:VERSION]")
    download.add_argument("-o", "--output", default=".", help="a file or folder (default: here)")
    download.set_defaults(handler=_download)
    tag = actions.add_parser("tag", parents=[common], help="set tags on a version")
    tag.add_argument("model", metavar="NAME:VERSION")
    tag.add_argument("tags", nargs="+", metavar="KEY=VALUE")
    tag.set_defaults(handler=_tag)
    untag = actions.add_parser("untag", parents=[common], help="remove tags from a version")
    untag.add_argument("model", metavar="NAME:VERSION")
    untag.add_argument("keys", nargs="+", metavar="KEY")
    untag.set_defaults(handler=_untag)
    delete = actions.add_parser("delete", parents=[common], help="delete a version")
    delete.add_argument("model", metavar="NAME:VERSION")
    delete.set_defaults(handler=_delete)


    services = commands.add_parser("services", help="supervised servers of registered models, with keys and TLS")
    service_actions = services.add_subparsers(dest="action", required=True)
    create = service_actions.add_parser("create", parents=[common], help="start a service and wait until it serves")
    create.add_argument("name")
    create.add_argument("--model", action="append", required=True, metavar="NAME[:VERSION]",
                        help="a registered model to serve (repeat for several; default version: the newest)")
    create.add_argument("--backend", choices=BACKENDS, default="reference")
    create.add_argument("--host", default="127.0.0.1")
    create.add_argument("--port", type=int, help="HTTP port (default: a free one)")
    create.add_argument("--grpc-port", type=int, help="gRPC port (default: a free one)")
    create.add_argument("--tls-cert", help="PEM certificate chain: HTTPS and gRPC over TLS")
    create.add_argument("--tls-key", help="PEM private key of --tls-cert")
    create.add_argument("--replicas", type=int, default=1,
                        help="server processes sharing the ports (the kernel spreads connections over them)")
    create.add_argument("--timeout", type=float, default=300.0, help="seconds to wait until it serves")
    create.add_argument("--json", action="store_true")
    create.set_defaults(handler=_service_create)
    update = service_actions.add_parser("update", parents=[common],
                                        help="move a service to other versions of its models, without a failed request")
    update.add_argument("name")
    update.add_argument("--model", action="append", required=True, metavar="NAME[:VERSION]")
    update.set_defaults(handler=_service_update)
    for action, handler, help_ in (("list", _service_list, "every service and its state"),
                                   ("show", _service_show, "one service: state, endpoint, models"),
                                   ("keys", _service_keys, "a service's primary and secondary keys"),
                                   ("logs", _service_logs, "the last lines of a service's logs"),
                                   ("delete", _service_delete, "stop a service and remove it"),
                                   ("regenerate-key", _service_regenerate_key, "replace a key; the old one stops working")):
        parser = service_actions.add_parser(action, parents=[common], help=help_)
        if action != "list":
            parser.add_argument("name")
        if action in ("list", "show", "keys"):
            parser.add_argument("--json", action="store_true")
        if action == "logs":
            parser.add_argument("--lines", type=int, default=50)
        if action == "regenerate-key":
            parser.add_argument("which", choices=("primary", "secondary"))
        parser.set_defaults(handler=handler)

    image = commands.add_parser("image", help="container images of services")
    image_actions = image.add_subparsers(dest="action", required=True)
    build = image_actions.add_parser("build", parents=[common], help="write a service's deploy bundle and build it")
    build.add_argument("service")
    build.add_argument("-o", "--output", required=True, help="a new folder for the bundle")
    build.add_argument("--tag", help="the image's tag (default: mvu-SERVICE:latest)")
    build.add_argument("--no-build", action="store_true", help="only write the bundle")
    build.set_defaults(handler=_image_build)

    k8s = commands.add_parser("k8s", help="Kubernetes and KServe manifests of services")
    k8s_actions = k8s.add_subparsers(dest="action", required=True)
    manifests = k8s_actions.add_parser("manifests", parents=[common], help="Deployment, Service, Secrets, "
                                       "HorizontalPodAutoscaler, KServe ServingRuntime and InferenceService")
    manifests.add_argument("service")
    manifests.add_argument("--image", required=True, help="the service's image (see `mvu image build`)")
    manifests.add_argument("--replicas", type=int, help="pods (default: the service's replicas)")
    manifests.add_argument("--max-replicas", type=int, default=4)
    manifests.add_argument("-o", "--output", help="a YAML file (default: print)")
    manifests.set_defaults(handler=_k8s_manifests)

    workspace = commands.add_parser("workspace", help="the workspace itself")
    workspace_actions = workspace.add_subparsers(dest="action", required=True)
    gc = workspace_actions.add_parser("gc", parents=[common], help="remove packages no model version references")
    gc.set_defaults(handler=_gc)
