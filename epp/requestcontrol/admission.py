"""Admission: refuse sheddable work while the pool is saturated.

Saturation follows the reference EPP: the mean over endpoints of
``max(waiting / queue_threshold, kv_use / kv_threshold)`` is at least 1, where an endpoint
with stale or missing metrics counts as fully saturated (epp cannot tell it has room).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from epp.datalayer.endpoint import DEFAULT_STALENESS_S, Endpoint

__all__ = ["SaturationDetector"]


@dataclass(frozen=True, slots=True)
class SaturationDetector:
    queue_threshold: float = 5.0
    kv_threshold: float = 0.8
    staleness_s: float = DEFAULT_STALENESS_S

    def saturated(self, endpoints: Sequence[Endpoint]) -> bool:
        if not endpoints:
            return True
        now = time.monotonic()
        total = 0.0
        for endpoint in endpoints:
            metrics = endpoint.metrics
            if metrics.updated_at <= 0.0 or now - metrics.updated_at > self.staleness_s:
                total += 1.0
                continue
            total += max(
                metrics.waiting_requests / self.queue_threshold,
                metrics.kv_cache_usage / self.kv_threshold,
            )
        return total / len(endpoints) >= 1.0
