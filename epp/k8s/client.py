"""The Kubernetes API client and the custom resources epp reads.

epp uses lightkube's async client: typed core resources, generic classes for the
Gateway API Inference Extension and llm-d CRDs, and in-cluster / kubeconfig loading.
"""

from __future__ import annotations

from lightkube import AsyncClient, KubeConfig
from lightkube.generic_resource import create_namespaced_resource

__all__ = [
    "INFERENCE_MODEL_RESOURCES",
    "LLMD_GROUP",
    "MODEL_REWRITE_RESOURCES",
    "OBJECTIVE_RESOURCES",
    "POOL_GROUP_V1",
    "POOL_GROUP_X",
    "InferenceModelRewrite",
    "InferenceModelRewriteX",
    "InferenceModelX",
    "InferenceObjective",
    "InferenceObjectiveX",
    "InferencePoolV1",
    "InferencePoolV1Alpha2",
    "make_client",
    "pool_resource",
]

POOL_GROUP_V1 = "inference.networking.k8s.io"  # InferencePool v1 (GA)
POOL_GROUP_X = "inference.networking.x-k8s.io"  # v1alpha2 pools, InferenceModel, older policies
LLMD_GROUP = "llm-d.ai"  # where llm-d moved InferenceObjective and InferenceModelRewrite

InferencePoolV1 = create_namespaced_resource(POOL_GROUP_V1, "v1", "InferencePool", "inferencepools")
InferencePoolV1Alpha2 = create_namespaced_resource(
    POOL_GROUP_X, "v1alpha2", "InferencePool", "inferencepools"
)
InferenceObjective = create_namespaced_resource(
    LLMD_GROUP, "v1alpha2", "InferenceObjective", "inferenceobjectives"
)
InferenceModelRewrite = create_namespaced_resource(
    LLMD_GROUP, "v1alpha2", "InferenceModelRewrite", "inferencemodelrewrites"
)
InferenceObjectiveX = create_namespaced_resource(
    POOL_GROUP_X, "v1alpha2", "InferenceObjective", "inferenceobjectives"
)
InferenceModelRewriteX = create_namespaced_resource(
    POOL_GROUP_X, "v1alpha2", "InferenceModelRewrite", "inferencemodelrewrites"
)
# InferenceModel lives only in the older group (GIE v0.3-v0.5; Alibaba ACK still uses it):
# InferenceObjective and InferenceModelRewrite replaced it.
InferenceModelX = create_namespaced_resource(
    POOL_GROUP_X, "v1alpha2", "InferenceModel", "inferencemodels"
)
# Each kind in both of its groups, the current one first: where the two hold an object of
# the same name, the current group's wins.
OBJECTIVE_RESOURCES = (InferenceObjective, InferenceObjectiveX)
MODEL_REWRITE_RESOURCES = (InferenceModelRewrite, InferenceModelRewriteX)
INFERENCE_MODEL_RESOURCES = (InferenceModelX,)


def pool_resource(group: str) -> type:
    """The InferencePool class for ``--pool-group``."""
    if group == POOL_GROUP_V1:
        return InferencePoolV1
    if group == POOL_GROUP_X:
        return InferencePoolV1Alpha2
    raise ValueError(
        f"unknown InferencePool group {group!r}: use {POOL_GROUP_V1} (v1) or {POOL_GROUP_X} "
        "(v1alpha2)"
    )


def make_client(kubeconfig: str | None, *, timeout_s: float = 10.0) -> AsyncClient:
    """A client for the cluster epp runs in, or the one ``kubeconfig`` names.

    Without ``kubeconfig``: the pod's service account when in a cluster, else
    ``$KUBECONFIG`` or ``~/.kube/config``. ``timeout_s`` bounds every request except the
    long-lived watch streams (their liveness is the informers' job).
    """
    import httpx2

    config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
    return AsyncClient(config=config, timeout=httpx2.Timeout(timeout_s), trust_env=False)
