"""Discovery on Kubernetes: the pods an InferencePool (or a plain label selector) selects.

An endpoint is a pod that is Ready, not terminating and has an IP, times each target
port: ``10.0.0.7:8000``. Pool mode watches the InferencePool (v1:
``spec.selector.matchLabels`` and ``spec.targetPorts[].number``; v1alpha2:
``spec.selector`` and ``spec.targetPortNumber``) and every pod in its namespace, so a
pool that changes its selector takes effect on the next event without restarting a
watch. Selector mode (``--endpoint-selector``, ``--endpoint-target-ports``) needs no
CRDs and lets the API server filter the pods.

Every pod or pool event recomputes the endpoint table and hands it to the store, so a
pod that turns unready or is deleted stops getting traffic within one event. While the
API server is unreachable the informers keep their last copy, and so does the table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lightkube import AsyncClient
from lightkube.resources.core_v1 import Pod

from epp.datalayer.static_discovery import format_address
from epp.datalayer.store import EndpointMeta, EndpointSpec, EndpointStore
from epp.k8s.client import pool_resource
from epp.k8s.informer import Informer

__all__ = [
    "ROUTING_STRATEGY_ANNOTATION",
    "KubernetesDiscovery",
    "PoolSpec",
    "endpoint_meta",
    "endpoints_from_pods",
    "parse_pool",
]

log = logging.getLogger(__name__)

ROUTING_STRATEGY_ANNOTATION = "inference.networking.x-k8s.io/routing-strategy"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What epp reads from an InferencePool."""

    selector: Mapping[str, str]
    target_ports: tuple[int, ...]
    routing_strategy: str | None = None  # the routing-strategy annotation, upper-cased


def parse_pool(pool: Mapping[str, Any]) -> PoolSpec:
    """Read a v1 or v1alpha2 InferencePool; raises ``ValueError`` on a malformed spec."""
    spec = pool.get("spec") or {}
    selector = spec.get("selector") or {}
    if "matchLabels" in selector or "matchExpressions" in selector:  # v1 LabelSelector
        if selector.get("matchExpressions"):
            raise ValueError("spec.selector.matchExpressions is not supported; use matchLabels")
        selector = selector.get("matchLabels") or {}
    if not isinstance(selector, Mapping) or not selector:
        raise ValueError("spec.selector selects nothing")
    if "targetPorts" in spec:
        ports = tuple(int(port["number"]) for port in spec["targetPorts"] or ())
    elif "targetPortNumber" in spec:
        ports = (int(spec["targetPortNumber"]),)
    else:
        raise ValueError("spec has neither targetPorts (v1) nor targetPortNumber (v1alpha2)")
    if not ports or not all(1 <= port <= 65535 for port in ports):
        raise ValueError(f"target ports must be 1-65535, got {list(ports)}")
    annotations = (pool.get("metadata") or {}).get("annotations") or {}
    strategy = annotations.get(ROUTING_STRATEGY_ANNOTATION)
    return PoolSpec(
        selector={str(k): str(v) for k, v in selector.items()},
        target_ports=ports,
        routing_strategy=strategy.strip().upper() if strategy else None,
    )


def endpoints_from_pods(
    pods: Iterable[Pod], selector: Mapping[str, str], target_ports: Iterable[int]
) -> list[EndpointSpec]:
    """Ready, not-terminating pods that ``selector`` matches, times ``target_ports``."""
    return sorted(spec for spec, _ in _endpoints(pods, selector, target_ports))


def endpoint_meta(
    pods: Iterable[Pod], selector: Mapping[str, str], target_ports: Iterable[int]
) -> dict[str, EndpointMeta]:
    """By address, the name and labels of each endpoint :func:`endpoints_from_pods`
    gives: ``namespace/pod-rank-N`` for the N-th target port, as the reference EPP
    names endpoints (its session tokens carry that name)."""
    return {spec[0]: meta for spec, meta in _endpoints(pods, selector, target_ports)}


def _endpoints(
    pods: Iterable[Pod], selector: Mapping[str, str], target_ports: Iterable[int]
) -> Iterator[tuple[EndpointSpec, EndpointMeta]]:
    ports = tuple(target_ports)
    for pod in pods:
        labels = pod.metadata.labels or {} if pod.metadata else {}
        if any(labels.get(key) != value for key, value in selector.items()):
            continue
        if not _serving(pod):
            continue
        metadata = pod.metadata
        assert metadata is not None  # _serving checked it
        frozen_labels = MappingProxyType({str(k): str(v) for k, v in labels.items()})
        ip = str(pod.status.podIP)  # type: ignore[union-attr]  # _serving checked it
        for rank, port in enumerate(ports):
            address = format_address(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
            name = f"{metadata.namespace or ''}/{metadata.name or ''}-rank-{rank}"
            yield (address, None), EndpointMeta(name, frozen_labels)


def _serving(pod: Pod) -> bool:
    if pod.metadata is None or pod.metadata.deletionTimestamp is not None:
        return False
    status = pod.status
    if status is None or not status.podIP or status.phase not in (None, "Running"):
        return False
    return any(
        condition.type == "Ready" and condition.status == "True"
        for condition in status.conditions or ()
    )


class KubernetesDiscovery:
    """Keeps the store's endpoints equal to what the pool (or selector) selects.

    Pool mode: ``pool_name`` set. Selector mode: ``selector`` and ``target_ports`` set.
    ``on_pool_change(spec)`` is called when the pool appears, changes or goes (``None``).
    """

    def __init__(
        self,
        store: EndpointStore,
        client: AsyncClient,
        *,
        namespace: str,
        pool_name: str | None = None,
        pool_group: str = "inference.networking.k8s.io",
        selector: Mapping[str, str] | None = None,
        target_ports: Iterable[int] = (),
        on_pool_change: Callable[[PoolSpec | None], None] | None = None,
        watch_timeout_s: int = 300,
    ) -> None:
        if (pool_name is None) == (selector is None):
            raise ValueError("give either a pool name or an endpoint selector")
        self._store = store
        self._namespace = namespace
        self._pool_name = pool_name
        self._on_pool_change = on_pool_change
        self._pool: PoolSpec | None = None
        if selector is not None:
            self._pool = PoolSpec(selector=dict(selector), target_ports=tuple(target_ports))
            if not self._pool.target_ports:
                raise ValueError("selector mode needs at least one target port")
        self._pool_informer: Informer | None = None
        if pool_name is not None:
            self._pool_informer = Informer(
                client,
                pool_resource(pool_group),
                namespace=namespace,
                fields={"metadata.name": pool_name},
                on_change=self._on_pools,
                watch_timeout_s=watch_timeout_s,
            )
        self._pod_informer = Informer(
            client,
            Pod,
            namespace=namespace,
            on_change=self._on_pods,
            labels=None if pool_name is not None else selector,
            watch_timeout_s=watch_timeout_s,
        )
        self._pods: list[Pod] = []
        self._published: list[EndpointSpec] | None = None
        self._published_meta: dict[str, EndpointMeta] = {}
        self._synced = asyncio.Event()

    @property
    def what(self) -> str:
        if self._pool_name is not None:
            return f"InferencePool {self._namespace}/{self._pool_name}"
        assert self._pool is not None
        selector = ",".join(f"{k}={v}" for k, v in self._pool.selector.items())
        return f"pods in {self._namespace} matching {selector}"

    @property
    def pool(self) -> PoolSpec | None:
        return self._pool

    def synced(self) -> bool:
        """True once the pool (if any) and the pods have been listed, and the pool exists."""
        pool_ready = self._pool_informer is None or self._pool_informer.synced.is_set()
        return pool_ready and self._pod_informer.synced.is_set() and self._pool is not None

    async def start(self) -> None:
        if self._pool_informer is not None:
            self._pool_informer.start()
        self._pod_informer.start()

    async def wait_synced(self, timeout_s: float | None) -> bool:
        """Wait up to ``timeout_s`` (None: forever) for the first complete view; False if it
        did not come."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._synced.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._pool_informer is not None:
            await self._pool_informer.stop()
        await self._pod_informer.stop()

    def _on_pools(self, pools: Mapping[str, Any]) -> None:
        previous = self._pool
        pool_object = next(iter(pools.values()), None)
        if pool_object is None:
            if previous is not None:
                log.warning("%s is gone; no endpoints until it is back", self.what)
            self._pool = None
        else:
            try:
                self._pool = parse_pool(pool_object)
            except (ValueError, TypeError, KeyError) as exc:
                log.error("%s is invalid, keeping the previous view: %s", self.what, exc)
                return
        if self._pool != previous:
            if self._pool is not None:
                log.info(
                    "%s: selector %s, target ports %s, routing strategy %s",
                    self.what,
                    dict(self._pool.selector),
                    list(self._pool.target_ports),
                    self._pool.routing_strategy or "(none)",
                )
            if self._on_pool_change is not None:
                self._on_pool_change(self._pool)
        self._publish()

    def _on_pods(self, pods: Mapping[str, Pod]) -> None:
        self._pods = list(pods.values())
        self._publish()

    def _publish(self) -> None:
        if self.synced():
            self._synced.set()
        if self._pool is None:
            found: dict[str, EndpointMeta] = {}
        else:
            found = endpoint_meta(self._pods, self._pool.selector, self._pool.target_ports)
        specs: list[EndpointSpec] = sorted((address, None) for address in found)
        # A pod whose labels changed is republished with the same addresses.
        if specs == self._published and found == self._published_meta:
            return
        before = {address for address, _ in self._published or ()}
        after = {address for address, _ in specs}
        self._published = specs
        self._published_meta = found
        self._store.replace(specs, found)
        log.info(
            "%s: %d endpoints (+%s -%s)",
            self.what,
            len(specs),
            ",".join(sorted(after - before)) or "none",
            ",".join(sorted(before - after)) or "none",
        )
