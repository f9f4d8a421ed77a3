"""Gauges and counters read at scrape time from live state: the prefix index of the
scheduler in use, and how fresh each endpoint's metrics are."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.scorers.prefix_cache import PrefixCacheScorer

__all__ = ["StateCollector", "prefix_index_entries"]


def prefix_index_entries(scheduler: object) -> int:
    """Entries in the prefix indexes of ``scheduler``'s profile (0 without a prefix scorer)."""
    profile = getattr(scheduler, "profile", None)
    hooks = getattr(profile, "removal_hooks", ())
    return sum(hook.index.size() for hook in hooks if isinstance(hook, PrefixCacheScorer))


class StateCollector(Collector):
    """``inference_extension_prefix_indexer_size`` (the reference's name: entries, all
    endpoints together), ``epp_endpoint_metrics_age_seconds`` and
    ``epp_endpoint_scrape_errors_total``."""

    def __init__(
        self,
        endpoints: Callable[[], Iterable[Endpoint]],
        scheduler: Callable[[], object],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoints = endpoints
        self._scheduler = scheduler
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        size = GaugeMetricFamily(
            "inference_extension_prefix_indexer_size",
            "Entries (endpoint, prefix block) in the prefix index.",
        )
        size.add_metric([], prefix_index_entries(self._scheduler()))
        labels = ["endpoint"]
        age = GaugeMetricFamily(
            "epp_endpoint_metrics_age_seconds",
            "Seconds since the endpoint's metrics were last scraped successfully "
            "(absent until the first success).",
            labels=labels,
        )
        errors = CounterMetricFamily(
            "epp_endpoint_scrape_errors",
            "Failed metric scrapes of the endpoint since it appeared.",
            labels=labels,
        )
        now = self._clock()
        for endpoint in self._endpoints():
            updated_at = endpoint.metrics.updated_at
            if updated_at > 0.0:
                age.add_metric([endpoint.address], max(0.0, now - updated_at))
            errors.add_metric([endpoint.address], endpoint.scrape_errors_total)
        return [size, age, errors]
