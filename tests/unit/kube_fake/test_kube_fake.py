"""The fake Kubernetes API server, over real HTTP: raw requests (httpx), lightkube, kubectl
(when installed) and the standalone module."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import pytest_asyncio
import yaml
from lightkube import ApiError, AsyncClient, Client, KubeConfig
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Pod
from lightkube.types import on_error_retry

from tests.kube_fake import (
    FakeKubeAPI,
    inference_model_rewrite,
    inference_objective,
    inference_pool_v1,
    inference_pool_v1alpha2,
    lease,
    pod,
)
from tests.kube_fake.patch import json_patch, merge_patch, strategic_merge_patch
from tests.kube_fake.selectors import SelectorError, parse_label_selector

Obj = dict[str, Any]
PODS = "/api/v1/namespaces/default/pods"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
POOLS_V1 = "/apis/inference.networking.k8s.io/v1/namespaces/default/inferencepools"
REPO = Path(__file__).resolve().parents[3]

InferencePool = create_namespaced_resource(
    "inference.networking.k8s.io", "v1", "InferencePool", "inferencepools"
)
InferencePoolAlpha = create_namespaced_resource(
    "inference.networking.x-k8s.io", "v1alpha2", "InferencePool", "inferencepools"
)


def _name(obj: Pod) -> str:
    """lightkube types metadata and its name as optional; the fake always sets both."""
    assert obj.metadata is not None and obj.metadata.name is not None
    return obj.metadata.name


def _generator(stream: AsyncIterable[tuple[str, Pod]]) -> AsyncGenerator[tuple[str, Pod], None]:
    """lightkube annotates watch() as an AsyncIterable; it is an async generator, which
    aclosing() can close."""
    assert isinstance(stream, AsyncGenerator)
    return stream


@pytest_asyncio.fixture
async def api() -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI(bookmark_interval_s=0.05) as server:
        yield server


@pytest_asyncio.fixture
async def http(api: FakeKubeAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        yield client


@pytest_asyncio.fixture
async def kube(api: FakeKubeAPI, tmp_path: Path) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(config=KubeConfig.from_file(api.write_kubeconfig(tmp_path / "kc")))
    yield client
    await client.close()


class Watch:
    """The events of one raw watch stream."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self) -> Obj:
        async with asyncio.timeout(5):
            event: Obj = json.loads(await anext(self._lines))
        return event

    async def rest(self) -> list[Obj]:
        """Every remaining event, once the server ends the stream."""
        async with asyncio.timeout(5):
            return [json.loads(line) async for line in self._lines]


@asynccontextmanager
async def watch(http: httpx.AsyncClient, path: str, **params: str) -> AsyncIterator[Watch]:
    async with http.stream("GET", path, params={"watch": "true", **params}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        yield Watch(response)


def summary(event: Obj) -> tuple[str, str]:
    return event["type"], event["object"]["metadata"].get("name", "")


def configmap(name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": name, "namespace": "default", "labels": labels or {}}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


# --- selectors and patches ---


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("", {}, True),
        ("app=a", {"app": "a"}, True),
        ("app==a", {"app": "b"}, False),
        ("app!=a", {}, True),
        ("app!=a", {"app": "a"}, False),
        ("app", {"app": ""}, True),
        ("!app", {"app": "a"}, False),
        ("app in (a, b),tier", {"app": "b", "tier": "x"}, True),
        ("app in (a,b)", {}, False),
        ("app notin (a)", {}, True),
        ("app notin (a)", {"app": "a"}, False),
        ("example.com/role=x, !gone", {"example.com/role": "x"}, True),
    ],
    ids=[
        "empty",
        "eq",
        "double-eq",
        "neq-absent",
        "neq",
        "exists",
        "not-exists",
        "in-and",
        "in-absent",
        "notin-absent",
        "notin",
        "prefixed-key",
    ],
)
def test_label_selector(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert parse_label_selector(selector)(labels) is matches


@pytest.mark.parametrize("selector", ["a=b=c", "a in b", "=x", "a in (x"])
def test_label_selector_rejects_garbage(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


def test_merge_and_json_patch() -> None:
    doc = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert merge_patch(doc, {"a": {"b": None, "d": 3}, "l": [9]}) == {
        "a": {"c": 2, "d": 3},
        "l": [9],
    }
    ops = [
        {"op": "add", "path": "/l/-", "value": 3},
        {"op": "replace", "path": "/a/b", "value": 5},
        {"op": "remove", "path": "/a/c"},
        {"op": "test", "path": "/l/0", "value": 1},
        {"op": "move", "from": "/a/b", "path": "/m"},
    ]
    assert json_patch(doc, ops) == {"a": {}, "l": [1, 2, 3], "m": 5}
    assert doc == {"a": {"b": 1, "c": 2}, "l": [1, 2]}  # the input is left alone


def test_strategic_merge_patch_merges_keyed_lists() -> None:
    spec = {
        "containers": [{"name": "a", "image": "1", "args": ["x"]}, {"name": "b"}],
        "tolerations": [{"key": "k"}],
    }
    patch = {
        "$setElementOrder/containers": [{"name": "a"}, {"name": "c"}],
        "containers": [
            {"name": "a", "image": "2"},
            {"name": "b", "$patch": "delete"},
            {"name": "c", "image": "3"},
        ],
        "tolerations": [{"key": "z"}],
    }
    assert strategic_merge_patch(spec, patch) == {
        "containers": [{"name": "a", "image": "2", "args": ["x"]}, {"name": "c", "image": "3"}],
        "tolerations": [{"key": "z"}],  # no merge key: replaced whole
    }


# --- discovery ---


@pytest.mark.asyncio
async def test_discovery_documents(http: httpx.AsyncClient) -> None:
    assert (await http.get("/version")).json()["gitVersion"].startswith("v1.")
    assert (await http.get("/api")).json()["versions"] == ["v1"]
    # client-go asks for aggregated discovery first; plain JSON sends it down the legacy path.
    aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    response = await http.get("/apis", headers={"Accept": f"{aggregated},application/json"})
    assert response.headers["content-type"] == "application/json"
    groups = {g["name"]: g for g in response.json()["groups"]}
    assert groups["coordination.k8s.io"]["preferredVersion"]["groupVersion"] == (
        "coordination.k8s.io/v1"
    )
    assert "inference.networking.x-k8s.io" in groups
    core = {r["name"]: r for r in (await http.get("/api/v1")).json()["resources"]}
    assert core["pods"]["kind"] == "Pod" and core["pods"]["namespaced"]
    assert not core["namespaces"]["namespaced"]
    assert "watch" in core["pods"]["verbs"]
    rbac = (await http.get("/apis/rbac.authorization.k8s.io/v1")).json()
    kinds = {r["kind"]: r["namespaced"] for r in rbac["resources"]}
    assert kinds == {
        "Role": True,
        "RoleBinding": True,
        "ClusterRole": False,
        "ClusterRoleBinding": False,
    }


@pytest.mark.parametrize(
    "path",
    [
        "/apis/example.com/v1/widgets",
        "/api/v1/namespaces/default/widgets",
        "/api/v1/pods/p1",
        "/api/v1/namespaces/default/nodes",
        "/apis/nope",
        "/openapi/v2",
        "/api/v1/namespaces/default/pods/p1/log",
    ],
    ids=[
        "unknown-group",
        "unknown-plural",
        "namespaced-without-namespace",
        "cluster-scoped-with-namespace",
        "unknown-group-doc",
        "openapi-v2",
        "subresource",
    ],
)
@pytest.mark.asyncio
async def test_unknown_paths_are_404_status(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    status = response.json()
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "NotFound", 404)


# --- verbs ---


@pytest.mark.asyncio
async def test_create_get_replace_fill_metadata(api: FakeKubeAPI, http: httpx.AsyncClient) -> None:
    before = api.resource_version
    created = await http.post(CONFIGMAPS, json=configmap("c1", {"k": "v"}))
    assert created.status_code == 201
    meta = created.json()["metadata"]
    assert int(meta["resourceVersion"]) == api.resource_version > before
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert (meta["namespace"], meta["generation"]) == ("default", 1)

    again = await http.post(CONFIGMAPS, json=configmap("c1", {}))
    assert (again.status_code, again.json()["reason"]) == (409, "AlreadyExists")
    assert (await http.get(f"{CONFIGMAPS}/c1")).json() == created.json()

    stale = {**created.json(), "data": {"k": "w"}}
    fresh = (await http.put(f"{CONFIGMAPS}/c1", json=stale)).json()
    assert fresh["metadata"]["uid"] == meta["uid"]
    assert int(fresh["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    conflict = await http.put(f"{CONFIGMAPS}/c1", json=stale)  # the old resourceVersion
    assert (conflict.status_code, conflict.json()["reason"]) == (409, "Conflict")
    assert "the object has been modified" in conflict.json()["message"]

    missing = await http.put(f"{CONFIGMAPS}/nope", json=configmap("nope", {}))
    assert missing.status_code == 404


@pytest.mark.asyncio
async def test_generation_moves_with_spec_only(api: FakeKubeAPI) -> None:
    pool = api.apply(inference_pool_v1("p", "default", {"app": "a"}))
    relabelled = api.apply({**pool, "metadata": {**pool["metadata"], "labels": {"x": "1"}}})
    assert relabelled["metadata"]["generation"] == 1
    moved = api.apply(inference_pool_v1("p", "default", {"app": "b"}))
    assert moved["metadata"]["generation"] == 2
    # Re-applying the same object writes nothing, like the real server.
    assert api.apply(inference_pool_v1("p", "default", {"app": "b"})) == moved


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"metadata": {"namespace": "other", "name": "x"}}, "BadRequest"),
        ({"metadata": {}}, "Invalid"),
        ({"apiVersion": "v2", "metadata": {"name": "x"}}, "BadRequest"),
    ],
    ids=["namespace-mismatch", "no-name", "wrong-api-version"],
)
@pytest.mark.asyncio
async def test_create_rejects_bad_bodies(http: httpx.AsyncClient, body: Obj, reason: str) -> None:
    response = await http.post(CONFIGMAPS, json={"kind": "ConfigMap", **body})
    assert response.json()["reason"] == reason


@pytest.mark.asyncio
async def test_generate_name_and_dry_run(api: FakeKubeAPI, http: httpx.AsyncClient) -> None:
    body = {"metadata": {"generateName": "cm-"}}
    made = (await http.post(CONFIGMAPS, json=body)).json()
    assert made["metadata"]["name"].startswith("cm-")
    rv = api.resource_version
    dry = await http.post(CONFIGMAPS, params={"dryRun": "All"}, json=configmap("dry", {}))
    assert dry.status_code == 201
    assert api.get("v1", "ConfigMap", "default", "dry") is None
    assert api.resource_version == rv


@pytest.mark.asyncio
async def test_list_shape_and_selectors(api: FakeKubeAPI, http: httpx.AsyncClient) -> None:
    api.apply(pod("a1", "default", "10.0.0.1", {"app": "a", "tier": "x"}))
    api.apply(pod("a2", "default", "10.0.0.2", {"app": "a"}))
    api.apply(pod("b1", "default", "10.0.0.3", {"app": "b"}))
    api.apply(pod("o1", "other", "10.0.0.4", {"app": "a"}))

    async def names(path: str, **params: str) -> list[str]:
        body = (await http.get(path, params=params)).json()
        return [item["metadata"]["name"] for item in body["items"]]

    body = (await http.get(PODS)).json()
    assert (body["kind"], body["apiVersion"]) == ("PodList", "v1")
    assert body["metadata"]["resourceVersion"] == str(api.resource_version)
    assert "kind" not in body["items"][0]  # built-in kinds' items carry no kind, as for real
    assert await names(PODS) == ["a1", "a2", "b1"]
    assert await names("/api/v1/pods", labelSelector="app=a") == ["a1", "a2", "o1"]
    assert await names(PODS, labelSelector="app in (a,b),!tier") == ["a2", "b1"]
    assert await names(PODS, labelSelector="app!=a") == ["b1"]
    assert await names(PODS, fieldSelector="metadata.name=a2") == ["a2"]
    assert await names("/api/v1/pods", fieldSelector="metadata.namespace!=default") == ["o1"]
    bad = await http.get(PODS, params={"labelSelector": "app in a"})
    assert (bad.status_code, bad.json()["reason"]) == (400, "BadRequest")

    api.apply(inference_pool_v1("pool", "default", {"app": "a"}))
    pools = (await http.get(POOLS_V1)).json()
    assert pools["kind"] == "InferencePoolList"
    assert pools["items"][0]["kind"] == "InferencePool"  # custom resources keep theirs


@pytest.mark.asyncio
async def test_patch_types(api: FakeKubeAPI, http: httpx.AsyncClient) -> None:
    api.apply(configmap("c", {"a": "1", "b": "2"}))

    async def patch(body: Any, content_type: str, **params: str) -> httpx.Response:
        return await http.patch(
            f"{CONFIGMAPS}/c",
            content=json.dumps(body),
            params=params,
            headers={"Content-Type": content_type},
        )

    merged = await patch({"data": {"a": None, "c": "3"}}, "application/merge-patch+json")
    assert merged.json()["data"] == {"b": "2", "c": "3"}
    strategic = await patch({"data": {"d": "4"}}, "application/strategic-merge-patch+json")
    assert strategic.json()["data"] == {"b": "2", "c": "3", "d": "4"}
    ops = [{"op": "remove", "path": "/data/b"}]
    assert (await patch(ops, "application/json-patch+json")).json()["data"] == {"c": "3", "d": "4"}
    stale = {"metadata": {"resourceVersion": "1"}, "data": {"x": "y"}}
    assert (await patch(stale, "application/merge-patch+json")).status_code == 409

    apply = "application/apply-patch+yaml"
    assert (await patch({"data": {}}, apply)).json()["reason"] == "Invalid"  # no fieldManager
    updated = await patch(
        {"apiVersion": "v1", "kind": "ConfigMap", "data": {"e": "5"}}, apply, fieldManager="test"
    )
    assert updated.status_code == 200 and updated.json()["data"]["e"] == "5"
    created = await http.patch(
        f"{CONFIGMAPS}/new",
        params={"fieldManager": "test"},
        content="apiVersion: v1\nkind: ConfigMap\ndata: {k: v}\n",
        headers={"Content-Type": apply},
    )
    assert created.status_code == 201
    stored = api.get("v1", "ConfigMap", "default", "new")
    assert stored is not None and stored["data"] == {"k": "v"}
    missing = await http.patch(
        f"{CONFIGMAPS}/nope", json={}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert missing.status_code == 404


@pytest.mark.asyncio
async def test_delete_and_delete_collection(api: FakeKubeAPI, http: httpx.AsyncClient) -> None:
    for name in ("x1", "x2", "y1"):
        api.apply(configmap(name, {}, {"g": name[0]}))
    gone = await http.delete(f"{CONFIGMAPS}/y1")
    assert gone.status_code == 200 and gone.json()["metadata"]["name"] == "y1"
    assert (await http.delete(f"{CONFIGMAPS}/y1")).status_code == 404
    both = await http.delete(CONFIGMAPS, params={"labelSelector": "g=x"})
    assert [o["metadata"]["name"] for o in both.json()["items"]] == ["x1", "x2"]
    assert api.list("v1", "ConfigMap", "default") == []


@pytest.mark.asyncio
async def test_crd_serves_its_kind(api: FakeKubeAPI, http: httpx.AsyncClient) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "versions": [{"name": "v1", "served": True, "storage": True}],
        },
    }
    made = await http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
    conditions = {c["type"]: c["status"] for c in made.json()["status"]["conditions"]}
    assert conditions["Established"] == "True"
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    path = "/apis/example.com/v1/namespaces/default/widgets"
    assert (await http.post(path, json=widget)).status_code == 201
    assert (await http.get("/apis/example.com/v1")).json()["resources"][0]["kind"] == "Widget"
    rv = api.resource_version
    api.apply(crd)  # unchanged: no write, even though the body has no status
    assert api.resource_version == rv


# --- watch ---


@pytest.mark.asyncio
async def test_watch_starts_with_current_objects(api: FakeKubeAPI, http: httpx.AsyncClient) -> None:
    api.apply(pod("p1", "default", "10.0.0.1", {"app": "a"}))
    api.apply(pod("elsewhere", "other", "10.0.0.9", {"app": "a"}))
    async with watch(http, PODS) as events:
        assert summary(await events.next()) == ("ADDED", "p1")
        api.apply(pod("p1", "default", "10.0.0.1", {"app": "a"}, ready=False))
        modified = await events.next()
        assert summary(modified) == ("MODIFIED", "p1")
        assert modified["object"]["kind"] == "Pod"  # watch events carry kind, even built-in
        api.delete("v1", "Pod", "default", "p1")
        deleted = await events.next()
        assert summary(deleted) == ("DELETED", "p1")
        assert deleted["object"]["metadata"]["resourceVersion"] == str(api.resource_version)


@pytest.mark.asyncio
async def test_watch_replays_history_after_resource_version(
    api: FakeKubeAPI, http: httpx.AsyncClient
) -> None:
    api.apply(pod("p1", "default", "10.0.0.1", {}))
    since = api.resource_version
    api.apply(pod("p2", "default", "10.0.0.2", {}))
    api.delete("v1", "Pod", "default", "p1")
    async with watch(http, PODS, resourceVersion=str(since)) as events:
        assert summary(await events.next()) == ("ADDED", "p2")
        assert summary(await events.next()) == ("DELETED", "p1")
        api.apply(pod("p3", "default", "10.0.0.3", {}))
        assert summary(await events.next()) == ("ADDED", "p3")


@pytest.mark.asyncio
async def test_watch_selector_transitions(api: FakeKubeAPI, http: httpx.AsyncClient) -> None:
    api.apply(pod("p", "default", "10.0.0.1", {"app": "a"}))
    async with watch(http, PODS, labelSelector="app=a") as events:
        assert summary(await events.next()) == ("ADDED", "p")
        api.apply(pod("p", "default", "10.0.0.1", {"app": "b"}))  # leaves the selector
        left = await events.next()
        assert summary(left) == ("DELETED", "p")
        assert left["object"]["metadata"]["labels"] == {"app": "a"}  # its last matching state
        api.apply(pod("q", "default", "10.0.0.2", {"app": "b"}))  # never matches: not sent
        api.apply(pod("p", "default", "10.0.0.1", {"app": "a"}))  # back in
        assert summary(await events.next()) == ("ADDED", "p")
    async with watch(http, PODS, fieldSelector="metadata.name=q") as events:
        assert summary(await events.next()) == ("ADDED", "q")


@pytest.mark.asyncio
async def test_watch_too_old_resource_version(api: FakeKubeAPI, http: httpx.AsyncClient) -> None:
    api.apply(pod("p1", "default", "10.0.0.1", {}))
    old = api.resource_version - 1
    api.compact()
    async with watch(http, PODS, resourceVersion=str(old)) as events:
        (error,) = await events.rest()  # one event, then the server ends the stream
    assert error["type"] == "ERROR"
    status = error["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
    assert status["message"].startswith("too old resource version")
    # The current version is still fine, and LIST ignores resourceVersion.
    async with watch(http, PODS, resourceVersion=str(api.resource_version)):
        pass
    listed = await http.get(PODS, params={"resourceVersion": str(old)})
    assert listed.status_code == 200


@pytest.mark.asyncio
async def test_bounded_history_expires_old_versions() -> None:
    async with FakeKubeAPI(history_limit=2) as small:
        start = small.resource_version
        for i in range(3):
            small.apply(configmap(f"c{i}", {}))
        async with httpx.AsyncClient(base_url=small.url) as client:
            async with watch(client, CONFIGMAPS, resourceVersion=str(start)) as events:
                assert (await events.rest())[0]["object"]["code"] == 410
            async with watch(client, CONFIGMAPS, resourceVersion=str(start + 1)) as events:
                assert summary(await events.next()) == ("ADDED", "c1")


@pytest.mark.asyncio
async def test_watch_timeout_seconds_ends_cleanly(http: httpx.AsyncClient) -> None:
    async with watch(http, PODS, timeoutSeconds="1") as events:
        assert await events.rest() == []


@pytest.mark.asyncio
async def test_watch_bookmarks(api: FakeKubeAPI, http: httpx.AsyncClient) -> None:
    api.apply(pod("p1", "default", "10.0.0.1", {}))
    async with watch(http, PODS, allowWatchBookmarks="true") as events:
        assert summary(await events.next()) == ("ADDED", "p1")
        bookmark = await events.next()
        assert bookmark["type"] == "BOOKMARK"
        assert bookmark["object"]["kind"] == "Pod"
        assert bookmark["object"]["metadata"]["resourceVersion"] == str(api.resource_version)


@pytest.mark.asyncio
async def test_watch_send_initial_events(api: FakeKubeAPI, http: httpx.AsyncClient) -> None:
    api.apply(pod("p1", "default", "10.0.0.1", {}))
    params = {
        "sendInitialEvents": "true",
        "allowWatchBookmarks": "true",
        "resourceVersionMatch": "NotOlderThan",
    }
    async with watch(http, PODS, **params) as events:
        assert summary(await events.next()) == ("ADDED", "p1")
        end = await events.next()
        assert end["type"] == "BOOKMARK"
        assert end["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


# --- faults ---


@pytest.mark.asyncio
async def test_drop_watches_breaks_streams(api: FakeKubeAPI, http: httpx.AsyncClient) -> None:
    async with watch(http, PODS) as events:
        await api.wait_for_watchers("/pods", 1)
        api.apply(pod("p1", "default", "10.0.0.1", {}))
        assert summary(await events.next()) == ("ADDED", "p1")
        api.drop_watches()
        assert api.watcher_count() == 0
        with pytest.raises(httpx.RemoteProtocolError):
            await events.next()


@pytest.mark.asyncio
async def test_client_going_away_unregisters_watch(
    api: FakeKubeAPI, http: httpx.AsyncClient
) -> None:
    async with watch(http, PODS):
        await api.wait_for_watchers(PODS, 1)
    for _ in range(500):  # the server notices the hang-up on its own time: poll, bounded
        if api.watcher_count() == 0:
            break
        await asyncio.sleep(0.01)
    assert api.watcher_count() == 0


@pytest.mark.asyncio
async def test_unavailable_fails_at_network_level(
    api: FakeKubeAPI, http: httpx.AsyncClient
) -> None:
    async with watch(http, PODS) as events:
        await api.wait_for_watchers(PODS)
        api.set_available(False)
        with pytest.raises(httpx.RemoteProtocolError):
            await events.next()
    with pytest.raises(httpx.TransportError):
        await http.get(PODS)
    api.set_available(True)
    assert (await http.get(PODS)).status_code == 200
    assert ("GET", PODS, {"watch": "true"}) in api.requests
    assert api.requests[-1] == ("GET", PODS, {})


@pytest.mark.asyncio
async def test_wait_for_watchers_times_out(api: FakeKubeAPI) -> None:
    with pytest.raises(TimeoutError):
        await api.wait_for_watchers("/pods", 1, timeout_s=0.05)


# --- lightkube ---


@pytest.mark.asyncio
async def test_lightkube_list_and_watch(api: FakeKubeAPI, kube: AsyncClient) -> None:
    api.apply(pod("a", "default", "10.0.0.1", {"app": "vllm"}))
    api.apply(pod("b", "default", "10.0.0.2", {"app": "other"}))
    listing = kube.list(Pod, namespace="default", labels={"app": "vllm"})
    assert [_name(p) async for p in listing] == ["a"]
    seen: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def consume() -> None:
        stream = kube.watch(
            Pod,
            namespace="default",
            labels={"app": "vllm"},
            resource_version=listing.resourceVersion,
        )
        async for kind, obj in stream:
            await seen.put((kind, _name(obj)))

    task = asyncio.create_task(consume())
    try:
        await api.wait_for_watchers(PODS)
        api.apply(pod("c", "default", "10.0.0.3", {"app": "vllm"}))
        api.apply(pod("a", "default", "10.0.0.1", {"app": "vllm"}, terminating=True))
        async with asyncio.timeout(5):
            assert [await seen.get(), await seen.get()] == [("ADDED", "c"), ("MODIFIED", "a")]
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


@pytest.mark.asyncio
async def test_lightkube_watch_expired_raises_api_error_410(
    api: FakeKubeAPI, kube: AsyncClient
) -> None:
    api.apply(pod("a", "default", "10.0.0.1", {}))
    old = str(api.resource_version - 1)
    api.compact()
    with pytest.raises(ApiError) as caught:
        async with asyncio.timeout(5):
            async for _ in kube.watch(Pod, namespace="default", resource_version=old):
                pass
    assert (caught.value.status.code, caught.value.status.reason) == (410, "Expired")
    # With on_error_retry lightkube restarts without a resourceVersion: current state again.
    retrying = _generator(
        kube.watch(Pod, namespace="default", resource_version=old, on_error=on_error_retry)
    )
    async with asyncio.timeout(5), aclosing(retrying):
        kind, obj = await anext(aiter(retrying))
    assert (kind, _name(obj)) == ("ADDED", "a")


@pytest.mark.asyncio
async def test_lightkube_dropped_watch(api: FakeKubeAPI, kube: AsyncClient) -> None:
    stream = _generator(kube.watch(Pod, namespace="default"))
    api.apply(pod("a", "default", "10.0.0.1", {}))
    async with asyncio.timeout(5), aclosing(stream):
        assert (await anext(aiter(stream)))[0] == "ADDED"
        api.drop_watches()
        with pytest.raises(httpx2.RemoteProtocolError):  # lightkube 1.0 is built on httpx2
            await anext(aiter(stream))
    # on_error_retry re-opens the watch from the last version it saw: no repeats, no gaps.
    retrying = _generator(kube.watch(Pod, namespace="default", on_error=on_error_retry))
    async with asyncio.timeout(5), aclosing(retrying):
        assert (await anext(aiter(retrying)))[0] == "ADDED"
        await api.wait_for_watchers(PODS)
        api.drop_watches()
        api.apply(pod("b", "default", "10.0.0.2", {}))
        kind, obj = await anext(aiter(retrying))
    assert (kind, _name(obj)) == ("ADDED", "b")


@pytest.mark.asyncio
async def test_lightkube_resumes_after_clean_end(api: FakeKubeAPI, kube: AsyncClient) -> None:
    stream = _generator(kube.watch(Pod, namespace="default"))
    api.apply(pod("a", "default", "10.0.0.1", {}))
    async with asyncio.timeout(5), aclosing(stream):
        assert (await anext(aiter(stream)))[0] == "ADDED"
        api.end_watches()
        api.apply(pod("b", "default", "10.0.0.2", {}))  # before lightkube is back: replayed
        kind, obj = await anext(aiter(stream))
    assert (kind, _name(obj)) == ("ADDED", "b")
    reopened = [q for q in api.requests if q.query.get("watch") == "true"][-1]
    assert reopened.query["resourceVersion"] == str(api.resource_version - 1)


@pytest.mark.asyncio
async def test_lightkube_generic_inference_resources(api: FakeKubeAPI, kube: AsyncClient) -> None:
    api.apply(inference_pool_v1("pool", "default", {"app": "vllm"}, target_ports=[8000, 8001]))
    api.apply(inference_pool_v1alpha2("old", "default", {"app": "vllm"}))
    (pool,) = [p async for p in kube.list(InferencePool, namespace="default")]
    assert pool.spec["targetPorts"] == [{"number": 8000}, {"number": 8001}]
    assert pool.spec["endpointPickerRef"]["port"] == {"number": 9002}
    (alpha,) = [p async for p in kube.list(InferencePoolAlpha, namespace="default")]
    assert alpha.spec["selector"] == {"app": "vllm"}
    assert alpha.spec["extensionRef"]["name"] == "old-epp"

    made = await kube.create(InferencePool.from_dict(inference_pool_v1("new", "default", {})))
    assert made.metadata.uid
    objective = api.apply(inference_objective("chat", "default", 10, "pool"))
    assert objective["spec"] == {
        "priority": 10,
        "poolRef": {"name": "pool", "group": "inference.networking.k8s.io"},
    }
    rewrite = api.apply(inference_model_rewrite("r", "default", "pool", [("m", {"m-v2": 100})]))
    assert rewrite["spec"]["rules"] == [
        {
            "matches": [{"model": {"type": "Exact", "value": "m"}}],
            "targets": [{"modelRewrite": "m-v2", "weight": 100}],
        }
    ]


@pytest.mark.asyncio
async def test_lightkube_lease_optimistic_concurrency(api: FakeKubeAPI, kube: AsyncClient) -> None:
    first = Lease(
        metadata=ObjectMeta(name="epp", namespace="default"),
        spec=LeaseSpec(holderIdentity="a", leaseDurationSeconds=15),
    )
    held = await kube.create(first)
    with pytest.raises(ApiError) as exists:
        await kube.create(first)
    assert exists.value.status.reason == "AlreadyExists"
    assert held.spec is not None
    held.spec.holderIdentity = "b"
    taken = await kube.replace(held)
    with pytest.raises(ApiError) as stale:
        await kube.replace(held)  # still carries the resourceVersion "b" replaced
    assert (stale.value.status.code, stale.value.status.reason) == (409, "Conflict")
    assert taken.spec is not None and taken.spec.holderIdentity == "b"
    other = Lease.from_dict(lease("other", "default", "c"))
    assert isinstance(other, Lease)  # lightkube types from_dict() as returning its base class
    applied = await kube.apply(other, field_manager="t")
    assert applied.spec is not None and applied.spec.holderIdentity == "c"


# --- sync use, other clients, the module ---


def test_start_in_thread_from_sync_code(tmp_path: Path) -> None:
    api = FakeKubeAPI().start_in_thread()
    try:
        client = Client(config=KubeConfig.from_file(api.write_kubeconfig(tmp_path / "kc")))
        api.apply(pod("a", "default", "10.0.0.1", {"app": "x"}))
        assert [_name(p) for p in client.list(Pod, namespace="default")] == ["a"]
        with (
            httpx.Client(base_url=api.url, timeout=10) as http,
            http.stream(
                "GET", PODS, params={"watch": "1", "resourceVersion": str(api.resource_version)}
            ) as stream,
        ):
            api.wait_for_watchers_sync(PODS, 1)
            api.delete("v1", "Pod", "default", "a")
            assert json.loads(next(stream.iter_lines()))["type"] == "DELETED"
        client.close()
        url = api.url
    finally:
        api.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)


@pytest.mark.asyncio
async def test_kubeconfig_shape(api: FakeKubeAPI, tmp_path: Path) -> None:
    config = yaml.safe_load(api.write_kubeconfig(tmp_path / "kc").read_text())
    assert config["clusters"][0]["cluster"]["server"] == api.url
    assert config["current-context"] == config["contexts"][0]["name"]


@pytest.fixture
def threaded_api() -> Iterator[FakeKubeAPI]:
    api = FakeKubeAPI().start_in_thread()
    yield api
    api.stop()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_apply_get_delete(threaded_api: FakeKubeAPI, tmp_path: Path) -> None:
    """client-go's discovery, OpenAPI check and strategic merge, as Helm uses them."""
    env = {**os.environ, "KUBECONFIG": str(threaded_api.write_kubeconfig(tmp_path / "kc"))}
    deployment: Obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "epp"},
        "spec": {
            "selector": {"matchLabels": {"app": "epp"}},
            "template": {
                "metadata": {"labels": {"app": "epp"}},
                "spec": {
                    "containers": [
                        {"name": "epp", "image": "epp:1", "args": ["--v=2"]},
                        {"name": "side", "image": "side:1"},
                    ]
                },
            },
        },
    }
    docs = [deployment, inference_pool_v1("pool", "default", {"app": "vllm"})]

    def kubectl(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["kubectl", *args],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    containers = deployment["spec"]["template"]["spec"]["containers"]
    containers[0]["image"], containers[1]["name"] = "epp:2", "other"
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(deployment))
    stored = threaded_api.get("apps/v1", "Deployment", "default", "epp")
    assert stored is not None
    assert stored["spec"]["template"]["spec"]["containers"] == [
        {"name": "epp", "image": "epp:2", "args": ["--v=2"]},
        {"name": "other", "image": "side:1"},
    ]
    assert kubectl("get", "inferencepools", "-o", "name").split() == [
        "inferencepool.inference.networking.k8s.io/pool"
    ]
    kubectl("delete", "deployment", "epp")
    assert threaded_api.get("apps/v1", "Deployment", "default", "epp") is None


def test_module_runs_standalone(tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(yaml.safe_dump_all([pod("p", "default", "10.0.0.1", {})]))
    kubeconfig = tmp_path / "kc"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.kube_fake",
            "--seed",
            str(seed),
            "--kubeconfig",
            str(kubeconfig),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None  # stdout=PIPE
    try:
        url = proc.stdout.readline().split()[-1]
        assert yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == url
        items = httpx.get(f"{url}{PODS}", timeout=10).json()["items"]
        assert [i["metadata"]["name"] for i in items] == ["p"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
