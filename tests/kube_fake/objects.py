"""Builders for the objects epp's tests put into the fake, shaped as the real server returns
them (CRD defaults such as `kind: Service` and `failureMode: FailClose` filled in)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "inference_model",
    "inference_model_rewrite",
    "inference_objective",
    "inference_pool_v1",
    "inference_pool_v1alpha2",
    "lease",
    "pod",
]

Obj = dict[str, Any]

GIE_GROUP = "inference.networking.k8s.io"
GIE_X_GROUP = "inference.networking.x-k8s.io"
LLMD_GROUP = "llm-d.ai"
STARTED = "2025-01-01T00:00:00Z"
STARTED_MICRO = "2025-01-01T00:00:00.000000Z"  # Lease times are MicroTime


def _meta(
    name: str,
    namespace: str,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def pod(
    name: str,
    namespace: str,
    ip: str | None,
    labels: Mapping[str, str],
    ready: bool = True,
    terminating: bool = False,
    phase: str = "Running",
    port: int = 8000,
) -> Obj:
    """A model-server Pod as the kubelet reports it; `ip=None` is a pod not yet given one."""
    flag = "True" if ready else "False"
    conditions = [
        {"type": t, "status": s, "lastProbeTime": None, "lastTransitionTime": STARTED}
        for t, s in (
            ("PodReadyToStartContainers", "True"),
            ("Initialized", "True"),
            ("Ready", flag),
            ("ContainersReady", flag),
            ("PodScheduled", "True"),
        )
    ]
    status: Obj = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": "192.168.0.10",
        "startTime": STARTED,
    }
    if ip:
        status.update(podIP=ip, podIPs=[{"ip": ip}])
    metadata = _meta(name, namespace, labels=labels)
    if terminating:
        metadata.update(deletionTimestamp=STARTED, deletionGracePeriodSeconds=30)
    container = {
        "name": "vllm",
        "image": "vllm/vllm-openai:latest",
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [container], "nodeName": "node-1", "restartPolicy": "Always"},
        "status": status,
    }


def inference_pool_v1(
    name: str,
    namespace: str,
    match_labels: Mapping[str, str],
    target_ports: Iterable[int] = (8000,),
    epp_service: str | None = None,
    annotations: Mapping[str, str] | None = None,
    epp_port: int = 9002,
) -> Obj:
    """An `inference.networking.k8s.io/v1` InferencePool; the EPP Service defaults to
    `{name}-epp`."""
    return {
        "apiVersion": f"{GIE_GROUP}/v1",
        "kind": "InferencePool",
        "metadata": _meta(name, namespace, annotations),
        "spec": {
            "selector": {"matchLabels": dict(match_labels)},
            "targetPorts": [{"number": p} for p in target_ports],
            "endpointPickerRef": {
                "kind": "Service",
                "name": epp_service or f"{name}-epp",
                "port": {"number": epp_port},
                "failureMode": "FailClose",
            },
        },
    }


def inference_pool_v1alpha2(
    name: str,
    namespace: str,
    match_labels: Mapping[str, str],
    target_port: int = 8000,
    epp_service: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Obj:
    """The older `inference.networking.x-k8s.io/v1alpha2` InferencePool: a plain label map
    as selector, one target port, and `extensionRef`."""
    return {
        "apiVersion": f"{GIE_X_GROUP}/v1alpha2",
        "kind": "InferencePool",
        "metadata": _meta(name, namespace, annotations),
        "spec": {
            "selector": dict(match_labels),
            "targetPortNumber": target_port,
            "extensionRef": {
                "kind": "Service",
                "name": epp_service or f"{name}-epp",
                "failureMode": "FailClose",
            },
        },
    }


def inference_objective(
    name: str,
    namespace: str,
    priority: int | None,
    pool_name: str,
    group: str = GIE_X_GROUP,
) -> Obj:
    """An InferenceObjective (`group` also `llm-d.ai`); `priority=None` leaves it unset
    (the API's default)."""
    spec: Obj = {"poolRef": {"name": pool_name, "group": GIE_GROUP}}
    if priority is not None:
        spec["priority"] = priority
    return {
        "apiVersion": f"{group}/v1alpha2",
        "kind": "InferenceObjective",
        "metadata": _meta(name, namespace),
        "spec": spec,
    }


def inference_model_rewrite(
    name: str,
    namespace: str,
    pool_name: str,
    rules: Iterable[tuple[str, Mapping[str, int]]],
    group: str = GIE_X_GROUP,
) -> Obj:
    """An InferenceModelRewrite (`group` also `llm-d.ai`). Each rule is (model to match
    exactly, {target: weight}):

    inference_model_rewrite("r", "ns", "pool", [("llama", {"llama-v1": 90, "llama-v2": 10})])
    """
    return {
        "apiVersion": f"{group}/v1alpha2",
        "kind": "InferenceModelRewrite",
        "metadata": _meta(name, namespace),
        "spec": {
            "poolRef": {"name": pool_name, "group": GIE_GROUP},
            "rules": [
                {
                    "matches": [{"model": {"type": "Exact", "value": model}}],
                    "targets": [{"modelRewrite": t, "weight": w} for t, w in targets.items()],
                }
                for model, targets in rules
            ],
        },
    }


def inference_model(
    name: str,
    namespace: str,
    pool_name: str,
    model_name: str,
    criticality: str | None = None,
    targets: Mapping[str, int | None] | None = None,
) -> Obj:
    """An `inference.networking.x-k8s.io/v1alpha2` InferenceModel (GIE v0.3-v0.5, Alibaba
    ACK); `targets` is {target model: weight, or None to leave the weight unset}:

    inference_model("m", "ns", "pool", "chat", "Standard", {"chat-v1": 90, "chat-v2": 10})
    """
    spec: Obj = {
        "modelName": model_name,
        "poolRef": {"group": GIE_X_GROUP, "kind": "InferencePool", "name": pool_name},
    }
    if criticality is not None:
        spec["criticality"] = criticality
    if targets is not None:
        spec["targetModels"] = [
            {"name": target, **({"weight": weight} if weight is not None else {})}
            for target, weight in targets.items()
        ]
    return {
        "apiVersion": f"{GIE_X_GROUP}/v1alpha2",
        "kind": "InferenceModel",
        "metadata": _meta(name, namespace),
        "spec": spec,
    }


def lease(
    name: str,
    namespace: str,
    holder: str | None = None,
    duration_s: int = 15,
    renew_time: str = STARTED_MICRO,
    transitions: int = 0,
) -> Obj:
    """A coordination.k8s.io/v1 Lease as client-go's leader election writes it."""
    spec: Obj = {"leaseDurationSeconds": duration_s, "leaseTransitions": transitions}
    if holder is not None:
        spec.update(holderIdentity=holder, acquireTime=renew_time, renewTime=renew_time)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": _meta(name, namespace),
        "spec": spec,
    }
