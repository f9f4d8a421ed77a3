"""Metrics read at scrape time from live state: the scheduler in use (its plugins'
statistics), and how fresh each endpoint's metrics are."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.datalayer.endpoint import Endpoint
from epp.observability.scheduler_metrics import SchedulerMetrics, SchedulerView

__all__ = ["StateCollector"]


class StateCollector(Collector):
    """The scheduler's families (:mod:`epp.observability.scheduler_metrics`),
    ``epp_endpoint_metrics_age_seconds`` and ``epp_endpoint_scrape_errors_total``."""

    def __init__(
        self,
        endpoints: Callable[[], Iterable[Endpoint]],
        scheduler: Callable[[], SchedulerView],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoints = endpoints
        self._scheduler = SchedulerMetrics(scheduler)
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
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
        return [*self._scheduler.collect(), age, errors]
