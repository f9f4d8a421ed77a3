"""The kinds the fake serves: a table of (group, version, plural) <-> kind.

The real API server learns these from its built-in types and from CRDs; the fake starts with
the kinds epp, its Helm chart and the Gateway API Inference Extension touch, and learns more
from `ResourceTable.register` or from a CustomResourceDefinition being created.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["BUILTIN_RESOURCES", "ResourceTable", "ResourceType", "split_api_version"]

BUILTIN_GROUPS = frozenset(
    {
        "",
        "apps",
        "autoscaling",
        "policy",
        "apiextensions.k8s.io",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "rbac.authorization.k8s.io",
    }
)
ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    """One served resource: `/api/v1/pods` or `/apis/{group}/{version}/{plural}`."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def builtin(self) -> bool:
        """Compiled into the real server (not a CRD): its LIST items carry no kind/apiVersion."""
        return self.group in BUILTIN_GROUPS

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """How the real server names it in messages: `pods`, `leases.coordination.k8s.io`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of the collection, or of one object when `name` is given."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else "/api/v1"
        ns = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        return f"{prefix}{ns}/{self.plural}" + (f"/{name}" if name else "")


def split_api_version(api_version: str) -> tuple[str, str]:
    """`apps/v1` -> ("apps", "v1"); `v1` -> ("", "v1")."""
    group, _, version = api_version.rpartition("/")
    return group, version


def _r(
    api_version: str, plural: str, kind: str, namespaced: bool = True, **kw: str
) -> ResourceType:
    group, version = split_api_version(api_version)
    singular = kw.get("singular", "")
    shorts = tuple(kw["short"].split(",")) if "short" in kw else ()
    return ResourceType(group, version, plural, kind, namespaced, singular, shorts)


GIE = "inference.networking.k8s.io/v1"
GIE_X = "inference.networking.x-k8s.io/v1alpha2"
LLMD = "llm-d.ai/v1alpha2"  # where llm-d moved InferenceObjective and InferenceModelRewrite

BUILTIN_RESOURCES: tuple[ResourceType, ...] = (
    _r("v1", "pods", "Pod", short="po"),
    _r("v1", "services", "Service", short="svc"),
    _r("v1", "serviceaccounts", "ServiceAccount", short="sa"),
    _r("v1", "configmaps", "ConfigMap", short="cm"),
    _r("v1", "secrets", "Secret"),
    _r("v1", "namespaces", "Namespace", namespaced=False, short="ns"),
    _r("v1", "nodes", "Node", namespaced=False, short="no"),
    _r("v1", "events", "Event", short="ev"),
    _r("v1", "endpoints", "Endpoints", singular="endpoints", short="ep"),
    _r("discovery.k8s.io/v1", "endpointslices", "EndpointSlice"),
    _r("apps/v1", "deployments", "Deployment", short="deploy"),
    _r("apps/v1", "statefulsets", "StatefulSet", short="sts"),
    _r("autoscaling/v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", short="hpa"),
    _r("coordination.k8s.io/v1", "leases", "Lease"),
    _r("rbac.authorization.k8s.io/v1", "roles", "Role"),
    _r("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),
    _r("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", namespaced=False),
    _r(
        "rbac.authorization.k8s.io/v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        namespaced=False,
    ),
    _r("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", short="pdb"),
    _r(
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        short="crd,crds",
    ),
    _r(GIE, "inferencepools", "InferencePool", short="infpool"),
    _r(GIE_X, "inferencepools", "InferencePool"),
    _r(GIE_X, "inferenceobjectives", "InferenceObjective"),
    _r(GIE_X, "inferencemodelrewrites", "InferenceModelRewrite"),
    _r(GIE_X, "inferencemodels", "InferenceModel"),
    _r(LLMD, "inferenceobjectives", "InferenceObjective"),
    _r(LLMD, "inferencemodelrewrites", "InferenceModelRewrite"),
    _r("gateway.networking.k8s.io/v1", "gatewayclasses", "GatewayClass", namespaced=False),
    _r("gateway.networking.k8s.io/v1", "gateways", "Gateway"),
    _r("gateway.networking.k8s.io/v1", "httproutes", "HTTPRoute"),
    _r("networking.istio.io/v1alpha3", "envoyfilters", "EnvoyFilter"),
    _r("networking.istio.io/v1", "destinationrules", "DestinationRule"),
    _r("gateway.envoyproxy.io/v1alpha1", "envoyextensionpolicies", "EnvoyExtensionPolicy"),
    _r("gateway.envoyproxy.io/v1alpha1", "envoypatchpolicies", "EnvoyPatchPolicy"),
    _r("monitoring.coreos.com/v1", "servicemonitors", "ServiceMonitor"),
    _r("monitoring.coreos.com/v1", "podmonitors", "PodMonitor"),
)


class ResourceTable:
    """Thread-safe lookup by path (group, version, plural) and by (apiVersion, kind)."""

    def __init__(self, resources: Iterable[ResourceType] = BUILTIN_RESOURCES) -> None:
        self._lock = threading.Lock()
        self._by_path: dict[tuple[str, str, str], ResourceType] = {}
        for rt in resources:
            self.register(rt)

    def register(self, rt: ResourceType) -> None:
        with self._lock:
            self._by_path[(rt.group, rt.version, rt.plural)] = rt

    def by_path(self, group: str, version: str, plural: str) -> ResourceType | None:
        with self._lock:
            return self._by_path.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, version = split_api_version(api_version)
        with self._lock:
            for rt in self._by_path.values():
                if (rt.group, rt.version, rt.kind) == (group, version, kind):
                    return rt
        return None

    def __iter__(self) -> Iterator[ResourceType]:
        with self._lock:
            return iter(list(self._by_path.values()))

    def groups(self) -> dict[str, list[str]]:
        """Group name -> its versions, in registration order (the first one is preferred)."""
        out: dict[str, list[str]] = {}
        for rt in self:
            versions = out.setdefault(rt.group, [])
            if rt.version not in versions:
                versions.append(rt.version)
        return out
