"""``/metrics`` for replicas sharing their decisions (epp/sync), read through a Protocol
so observability imports nothing of the sync."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["SyncCollector", "SyncView"]

_COUNTERS = {
    "published_batches": "Batches of decisions this replica published.",
    "published_bytes": "Bytes of batches this replica published.",
    "received_batches": "Batches from other replicas applied here.",
    "received_picks": "Prefixes other replicas picked, added to this replica's index.",
    "invalid_batches": "Messages on the channel that were no batch, or from a replica "
    "past the cap; ignored.",
    "dropped_picks": "Picks not published: Redis unreachable, or the buffer full.",
    "disconnects": "Times this replica lost Redis.",
}


class SyncView(Protocol):
    @property
    def connected(self) -> bool: ...

    def counters(self) -> Mapping[str, int]: ...

    def peers(self) -> int: ...


class SyncCollector(Collector):
    def __init__(self, sync: SyncView) -> None:
        self._sync = sync

    def collect(self) -> Iterable[Metric]:
        connected = GaugeMetricFamily(
            "epp_sync_connected",
            "1 while this replica shares decisions through Redis; 0: it routes on its own "
            "view alone.",
        )
        connected.add_metric([], 1 if self._sync.connected else 0)
        peers = GaugeMetricFamily(
            "epp_sync_peers", "Other replicas heard from within the expiry (--sync-expiry)."
        )
        peers.add_metric([], self._sync.peers())
        families: list[Metric] = [connected, peers]
        counters = self._sync.counters()
        for name, text in _COUNTERS.items():
            family = CounterMetricFamily(f"epp_sync_{name}", text)
            family.add_metric([], counters.get(name, 0))
            families.append(family)
        return families
