"""Kubernetes and KServe manifests of one service: a Deployment of stateless replicas (keys and TLS from
Secrets, the packages in the image), its Service, the Secrets, a HorizontalPodAutoscaler, and a KServe
ServingRuntime with an InferenceService speaking the Open Inference Protocol (v2)."""

from __future__ import annotations

import base64
from pathlib import Path

from mvu.host.control.bundle import GRPC_PORT, HTTP_PORT, KEYS_PATH, TLS_FOLDER, serve_arguments
from mvu.host.control.services import ServiceManager

__all__ = ["manifests", "KUBERNETES_KINDS", "KSERVE_KINDS"]

#: Kinds that kubernetes-validate checks against the Kubernetes schemas; the KServe kinds are custom.
KUBERNETES_KINDS = ("Secret", "Deployment", "Service", "HorizontalPodAutoscaler")
KSERVE_KINDS = ("ServingRuntime", "InferenceService")
_MODEL_FORMAT = "mvu"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _secrets(manager: ServiceManager, name: str, labels: dict) -> list[dict]:
    service = manager.get(name)
    keys = (manager.folder(name) / "keys.json").read_bytes()  # hashed keys only
    secrets = [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-keys", "labels": labels},
                "type": "Opaque", "data": {"keys.json": _b64(keys)}}]
    if service.tls_cert:
        secrets.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-tls", "labels": labels},
                        "type": "kubernetes.io/tls", "data": {"tls.crt": _b64(Path(service.tls_cert).read_bytes()),
                                                             "tls.key": _b64(Path(service.tls_key).read_bytes())}})
    return secrets


def _container(name: str, image: str, arguments: list[str], tls: bool, container_name: str) -> dict:
    probe = {"httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT, "scheme": "HTTPS" if tls else "HTTP"},
             "periodSeconds": 10, "timeoutSeconds": 3}
    mounts = [{"name": "keys", "mountPath": str(Path(KEYS_PATH).parent), "readOnly": True}]
    if tls:
        mounts.append({"name": "tls", "mountPath": TLS_FOLDER, "readOnly": True})
    return {"name": container_name, "image": image, "args": arguments,
            "ports": [{"name": "http", "containerPort": HTTP_PORT}, {"name": "grpc", "containerPort": GRPC_PORT}],
            "readinessProbe": probe, "livenessProbe": {**probe, "initialDelaySeconds": 30},
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": False},
            "volumeMounts": mounts}


def _volumes(name: str, tls: bool) -> list[dict]:
    volumes = [{"name": "keys", "secret": {"secretName": f"{name}-keys"}}]
    if tls:
        volumes.append({"name": "tls", "secret": {"secretName": f"{name}-tls"}})
    return volumes


def manifests(manager: ServiceManager, name: str, image: str, *, replicas: int | None = None,
              max_replicas: int = 4) -> list[dict]:
    """Every resource of service ``name`` running ``image`` (built by `mvu image build`); ``replicas`` pods
    (default: as many as the service has server processes here)."""
    service = manager.get(name)
    replicas = service.replicas if replicas is None else replicas
    tls = bool(service.tls_cert)
    arguments = serve_arguments(manager, name)
    labels = {"app.kubernetes.io/name": "mvu", "app.kubernetes.io/instance": name}
    pod = {"metadata": {"labels": labels},
           "spec": {"containers": [_container(name, image, arguments, tls, "mvu")], "volumes": _volumes(name, tls)}}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
                  "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": pod}}
    kube_service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
                    "spec": {"selector": labels, "ports": [
                        {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                        {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "appProtocol": "grpc"}]}}
    autoscaler = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                  "metadata": {"name": name, "labels": labels},
                  "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                           "minReplicas": replicas, "maxReplicas": max(max_replicas, replicas),
                           "metrics": [{"type": "Resource", "resource": {
                               "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]}}
    runtime = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
               "metadata": {"name": f"{name}-runtime", "labels": labels},
               "spec": {"supportedModelFormats": [{"name": _MODEL_FORMAT, "version": "1", "autoSelect": True}],
                        "protocolVersions": ["v2", "grpc-v2"],
                        "containers": [_container(name, image, arguments, tls, "kserve-container")],
                        "volumes": _volumes(name, tls)}}
    inference = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                 "metadata": {"name": name, "labels": labels},
                 "spec": {"predictor": {"minReplicas": replicas, "maxReplicas": max(max_replicas, replicas),
                                        "model": {"modelFormat": {"name": _MODEL_FORMAT, "version": "1"},
                                                  "runtime": f"{name}-runtime", "protocolVersion": "v2"}}}}
    return [*_secrets(manager, name, labels), deployment, kube_service, autoscaler, runtime, inference]
