"""Discovery documents, so that client-go (Helm, kubectl) can map kinds to resources.

client-go first asks `/api` and `/apis` with an Accept header that prefers the aggregated
form (`application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`, then v2beta1,
then plain `application/json`). It picks the parser from the response's Content-Type, so
answering plain `application/json` makes it use the legacy path: the APIVersions /
APIGroupList here, then one APIResourceList per group version.

kubectl apply and Helm (which validate manifests unless told not to) also read OpenAPI v3;
without it they fail with "failed to download openapi". See `openapi_v3_group_version`.
"""

from __future__ import annotations

from typing import Any

from .resources import ALL_VERBS, ResourceTable

__all__ = [
    "GIT_VERSION",
    "api_group",
    "api_groups",
    "api_resources",
    "api_versions",
    "openapi_v3_group_version",
    "openapi_v3_root",
    "version",
]

GIT_VERSION = "v1.33.0"

Obj = dict[str, Any]


def version() -> Obj:
    """`GET /version`."""
    return {
        "major": "1",
        "minor": GIT_VERSION.split(".")[1],
        "gitVersion": GIT_VERSION,
        "gitCommit": "0" * 40,
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions(server_address: str) -> Obj:
    """`GET /api`: the core group's versions."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def api_group(name: str, versions: list[str]) -> Obj:
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": gvs,
        "preferredVersion": gvs[0],
    }


def api_groups(table: ResourceTable) -> Obj:
    """`GET /apis`: every named group (the core group is under `/api`)."""
    groups = [api_group(g, vs) for g, vs in table.groups().items() if g]
    for g in groups:
        del g["kind"], g["apiVersion"]  # list entries carry neither
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_resources(table: ResourceTable, group: str, version: str) -> Obj | None:
    """`GET /api/v1` or `/apis/{group}/{version}`; None when nothing is served there."""
    resources = [
        {
            "name": rt.plural,
            "singularName": rt.singular_name,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(ALL_VERBS),
            **({"shortNames": list(rt.short_names)} if rt.short_names else {}),
        }
        for rt in table
        if (rt.group, rt.version) == (group, version)
    ]
    if not resources:
        return None
    gv = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_v3_root(table: ResourceTable) -> Obj:
    """`GET /openapi/v3`: where each group version's document lives."""
    paths = {
        _gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}"}
        for g, versions in table.groups().items()
        for v in versions
    }
    return {"paths": paths}


def openapi_v3_group_version(table: ResourceTable, group: str, version: str) -> Obj | None:
    """`GET /openapi/v3/apis/{group}/{version}`: only what kubectl and Helm check before
    sending an object — that each kind's PATCH takes `fieldValidation`, so they leave
    validation to the server instead of downloading schemas (the fake validates nothing)."""
    paths: Obj = {}
    for rt in table:
        if (rt.group, rt.version) != (group, version):
            continue
        gvk = {"group": group, "version": version, "kind": rt.kind}
        param = {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
        paths[rt.path("{namespace}", "{name}")] = {
            "patch": {
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [param],
                "responses": {"200": {"description": "OK"}},
            }
        }
    if not paths:
        return None
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
    }
