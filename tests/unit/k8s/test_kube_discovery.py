"""Pool and selector discovery against the fake API server: real HTTP list/watch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import pytest_asyncio
from lightkube import AsyncClient

from epp.datalayer.kube_discovery import (
    ROUTING_STRATEGY_ANNOTATION,
    KubernetesDiscovery,
    PoolSpec,
    parse_pool,
)
from epp.datalayer.store import EndpointStore
from tests.kube_fake import FakeKubeAPI, inference_pool_v1, inference_pool_v1alpha2, pod
from tests.unit.k8s.conftest import eventually

NS = "inference"
LABELS = {"app": "vllm-llama"}


def addresses(store: EndpointStore) -> set[str]:
    return {ep.address for ep in store.all()}


@pytest_asyncio.fixture
async def running(
    api: FakeKubeAPI, client: AsyncClient
) -> AsyncIterator[tuple[KubernetesDiscovery, EndpointStore, list[PoolSpec | None]]]:
    api.apply(inference_pool_v1("llama", NS, LABELS, target_ports=[8000, 8001]))
    api.apply(pod("ready", NS, "10.0.0.1", LABELS))
    api.apply(pod("unready", NS, "10.0.0.2", LABELS, ready=False))
    api.apply(pod("terminating", NS, "10.0.0.3", LABELS, terminating=True))
    api.apply(pod("no-ip", NS, None, LABELS))
    api.apply(pod("other-app", NS, "10.0.0.4", {"app": "other"}))
    api.apply(pod("other-namespace", "elsewhere", "10.0.0.5", LABELS))
    store = EndpointStore()
    changes: list[PoolSpec | None] = []
    discovery = KubernetesDiscovery(
        store, client, namespace=NS, pool_name="llama", on_pool_change=changes.append
    )
    await discovery.start()
    assert await discovery.wait_synced(10)
    yield discovery, store, changes
    await discovery.stop()


@pytest.mark.asyncio
async def test_ready_pods_times_target_ports(running: Any) -> None:
    discovery, store, changes = running
    assert discovery.synced()
    assert addresses(store) == {"10.0.0.1:8000", "10.0.0.1:8001"}
    assert all(ep.models is None for ep in store.all())
    assert changes == [PoolSpec(selector=LABELS, target_ports=(8000, 8001))]


@pytest.mark.asyncio
async def test_pods_come_turn_unready_and_go_within_one_event(
    running: Any, api: FakeKubeAPI
) -> None:
    _, store, _ = running
    api.apply(pod("unready", NS, "10.0.0.2", LABELS, ready=True))
    await eventually(lambda: "10.0.0.2:8000" in addresses(store))
    kept = store.get("10.0.0.1:8000")
    api.apply(pod("ready", NS, "10.0.0.1", LABELS, ready=False))
    await eventually(lambda: "10.0.0.1:8000" not in addresses(store))
    api.delete("v1", "Pod", NS, "unready")
    await eventually(lambda: addresses(store) == set())
    api.apply(pod("ready", NS, "10.0.0.1", LABELS))
    await eventually(lambda: addresses(store) == {"10.0.0.1:8000", "10.0.0.1:8001"})
    assert store.get("10.0.0.1:8000") is not kept  # a returning pod starts fresh


@pytest.mark.asyncio
async def test_endpoints_carry_pod_labels_and_the_reference_name(
    running: Any, api: FakeKubeAPI
) -> None:
    _, store, _ = running
    first, second = store.get("10.0.0.1:8000"), store.get("10.0.0.1:8001")
    assert (first.name, second.name) == (f"{NS}/ready-rank-0", f"{NS}/ready-rank-1")
    assert dict(first.labels) == LABELS
    # A relabelled pod keeps its endpoints (and their state) and shows the new labels.
    api.apply(pod("ready", NS, "10.0.0.1", {**LABELS, "llm-d.ai/role": "decode"}))
    await eventually(lambda: store.get("10.0.0.1:8000").labels.get("llm-d.ai/role") == "decode")
    assert store.get("10.0.0.1:8000") is first


@pytest.mark.asyncio
async def test_pool_changing_its_selector_and_ports(running: Any, api: FakeKubeAPI) -> None:
    _, store, changes = running
    api.apply(
        inference_pool_v1(
            "llama",
            NS,
            {"app": "other"},
            target_ports=[9000],
            annotations={ROUTING_STRATEGY_ANNOTATION: "prefix_cache"},
        )
    )
    await eventually(lambda: addresses(store) == {"10.0.0.4:9000"})
    assert changes[-1] == PoolSpec({"app": "other"}, (9000,), "PREFIX_CACHE")
    api.delete("inference.networking.k8s.io/v1", "InferencePool", NS, "llama")
    await eventually(lambda: addresses(store) == set())
    assert changes[-1] is None


@pytest.mark.asyncio
async def test_watch_expiry_relists_and_catches_up(running: Any, api: FakeKubeAPI) -> None:
    _, store, _ = running
    await api.wait_for_watchers("/pods")
    api.compact()  # the next watch from an old resourceVersion gets 410 Gone
    api.drop_watches()
    api.apply(pod("new", NS, "10.0.0.6", LABELS))
    await eventually(lambda: "10.0.0.6:8000" in addresses(store))
    assert any(
        seen.method == "GET" and "/pods" in seen.path and "watch" not in seen.query
        for seen in api.requests[-20:]
    )  # it listed again


@pytest.mark.asyncio
async def test_unreachable_api_server_keeps_the_last_endpoints(
    running: Any, api: FakeKubeAPI
) -> None:
    _, store, _ = running
    await api.wait_for_watchers("/pods")
    api.set_available(False)
    api.delete("v1", "Pod", NS, "ready")  # happens while epp cannot see it
    api.apply(pod("arrived", NS, "10.0.0.7", LABELS))
    refused = len(api.requests)
    await eventually(lambda: len(api.requests) >= refused + 2)  # it tried, and was hung up on
    assert addresses(store) == {"10.0.0.1:8000", "10.0.0.1:8001"}
    api.set_available(True)
    await eventually(lambda: addresses(store) == {"10.0.0.7:8000", "10.0.0.7:8001"})


@pytest.mark.asyncio
async def test_v1alpha2_pool(api: FakeKubeAPI, client: AsyncClient) -> None:
    api.apply(inference_pool_v1alpha2("old", NS, LABELS, target_port=8080))
    api.apply(pod("p", NS, "10.0.1.1", LABELS))
    store = EndpointStore()
    discovery = KubernetesDiscovery(
        store, client, namespace=NS, pool_name="old", pool_group="inference.networking.x-k8s.io"
    )
    await discovery.start()
    try:
        assert await discovery.wait_synced(10)
        assert addresses(store) == {"10.0.1.1:8080"}
    finally:
        await discovery.stop()


@pytest.mark.asyncio
async def test_missing_pool_is_not_synced(api: FakeKubeAPI, client: AsyncClient) -> None:
    store = EndpointStore()
    discovery = KubernetesDiscovery(store, client, namespace=NS, pool_name="absent")
    await discovery.start()
    try:
        assert not await discovery.wait_synced(0.5)
        api.apply(inference_pool_v1("absent", NS, LABELS))
        api.apply(pod("p", NS, "10.0.2.1", LABELS))
        assert await discovery.wait_synced(10)
        await eventually(lambda: addresses(store) == {"10.0.2.1:8000"})
    finally:
        await discovery.stop()


@pytest.mark.asyncio
async def test_selector_mode_without_crds(api: FakeKubeAPI, client: AsyncClient) -> None:
    api.apply(pod("a", NS, "10.0.3.1", {"app": "vllm", "tier": "gpu"}))
    api.apply(pod("b", NS, "10.0.3.2", {"app": "vllm"}))
    store = EndpointStore()
    discovery = KubernetesDiscovery(
        store, client, namespace=NS, selector={"app": "vllm", "tier": "gpu"}, target_ports=[8000]
    )
    await discovery.start()
    try:
        assert await discovery.wait_synced(10)
        assert addresses(store) == {"10.0.3.1:8000"}
        assert any("labelSelector" in seen.query for seen in api.requests)
    finally:
        await discovery.stop()


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        (
            {"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 80}]}},
            PoolSpec({"a": "b"}, (80,)),
        ),
        (
            {
                "spec": {"selector": {"a": "b"}, "targetPortNumber": 8000},
                "metadata": {"annotations": {ROUTING_STRATEGY_ANNOTATION: " default "}},
            },
            PoolSpec({"a": "b"}, (8000,), "DEFAULT"),
        ),
    ],
)
def test_parse_pool(pool: Mapping[str, Any], expected: PoolSpec) -> None:
    assert parse_pool(pool) == expected


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ({"spec": {"selector": {}, "targetPortNumber": 1}}, "selects nothing"),
        (
            {"spec": {"selector": {"matchExpressions": [{"key": "a"}]}, "targetPorts": []}},
            "matchExpressions",
        ),
        ({"spec": {"selector": {"a": "b"}}}, "neither targetPorts"),
        ({"spec": {"selector": {"a": "b"}, "targetPorts": [{"number": 70000}]}}, "1-65535"),
    ],
)
def test_parse_pool_refuses_malformed_specs(pool: Mapping[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pool(pool)
