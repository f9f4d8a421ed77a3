"""epp's own Prometheus metrics, named like the reference EPP's where one exists."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.datalayer.endpoint import Endpoint

__all__ = [
    "REGISTRY",
    "REQUESTS",
    "REQUEST_ERRORS",
    "SCHEDULER_DURATION",
    "STREAM_ERRORS",
    "PoolCollector",
    "requests_for",
]

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "inference_objective_request_total",
    "Requests routed, by the model asked for.",
    ["model_name", "target_model_name"],
    registry=REGISTRY,
)
REQUEST_ERRORS = Counter(
    "inference_objective_request_error_total",
    "Requests epp answered itself with an error, by model and error code.",
    ["model_name", "target_model_name", "error_code"],
    registry=REGISTRY,
)
SCHEDULER_DURATION = Histogram(
    "inference_extension_scheduler_e2e_duration_seconds",
    "Time to choose an endpoint for one request.",
    buckets=(0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01),
    registry=REGISTRY,
)
_requests_by_model: dict[tuple[str, str], Counter] = {}


def requests_for(model: str, target_model: str) -> Counter:
    """The request counter's child for a model pair (``labels()`` costs a lock and a tuple)."""
    key = (model, target_model)
    child = _requests_by_model.get(key)
    if child is None:
        if len(_requests_by_model) >= 1024:  # bounded, whatever clients put in "model"
            _requests_by_model.clear()
        child = _requests_by_model[key] = REQUESTS.labels(model, target_model)
    return child


STREAM_ERRORS = Counter(
    "epp_extproc_stream_errors_total",
    "ext_proc streams that ended in an unexpected error (a bug or a protocol violation).",
    ["reason"],
    registry=REGISTRY,
)


class PoolCollector(Collector):
    """Gauges computed at scrape time from the endpoint table (nothing to keep in sync)."""

    def __init__(
        self,
        endpoints: Callable[[], Iterable[Endpoint]],
        is_ready: Callable[[Endpoint], bool],
        staleness_s: float,
        pool_name: str = "static",
    ) -> None:
        self._endpoints = endpoints
        self._is_ready = is_ready
        self._staleness_s = staleness_s
        self._pool = pool_name

    def collect(self) -> Iterable[Metric]:
        endpoints = list(self._endpoints())
        ready = [ep for ep in endpoints if self._is_ready(ep)]
        labels = ["name"]
        ready_pods = GaugeMetricFamily(
            "inference_pool_ready_pods", "Endpoints that are candidates for routing.", labels=labels
        )
        ready_pods.add_metric([self._pool], len(ready))
        kv = GaugeMetricFamily(
            "inference_pool_average_kv_cache_utilization",
            "Mean KV-cache utilization over ready endpoints.",
            labels=labels,
        )
        queue = GaugeMetricFamily(
            "inference_pool_average_queue_size",
            "Mean waiting requests over ready endpoints.",
            labels=labels,
        )
        if ready:
            kv.add_metric([self._pool], sum(ep.metrics.kv_cache_usage for ep in ready) / len(ready))
            queue.add_metric(
                [self._pool], sum(ep.metrics.waiting_requests for ep in ready) / len(ready)
            )
        per_endpoint = ["endpoint"]
        inflight = GaugeMetricFamily(
            "epp_endpoint_inflight_requests",
            "Requests epp routed to the endpoint whose streams have not ended.",
            labels=per_endpoint,
        )
        failures = GaugeMetricFamily(
            "epp_endpoint_scrape_failures",
            "Consecutive failed metric scrapes of the endpoint (0 when healthy).",
            labels=per_endpoint,
        )
        stale = GaugeMetricFamily(
            "epp_endpoint_metrics_stale",
            "1 when the endpoint's metrics are older than the staleness limit.",
            labels=per_endpoint,
        )
        for ep in endpoints:
            inflight.add_metric([ep.address], ep.inflight_requests)
            failures.add_metric([ep.address], ep.scrape_failures)
            stale.add_metric([ep.address], 0 if ep.is_fresh(self._staleness_s) else 1)
        return [ready_pods, kv, queue, inflight, failures, stale]
