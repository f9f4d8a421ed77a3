"""epp's own Prometheus metrics, named like the reference EPP's where one exists.

Names, labels and buckets of the reference's follow GIE v1.5.0 ``pkg/epp/metrics/
metrics.go``; the per-request ones are in :mod:`epp.observability.request_metrics`, the
scheduler's plugins' in :mod:`epp.observability.scheduler_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.datalayer.endpoint import Endpoint

__all__ = [
    "ENDPOINT_EJECTIONS",
    "MODEL_FALLBACKS",
    "MODEL_LABELS",
    "OTHER_MODELS",
    "REGISTRY",
    "REQUESTS",
    "REQUEST_ERRORS",
    "SCHEDULER_DURATION",
    "STREAM_ERRORS",
    "BodyMemoryCollector",
    "ModelLabels",
    "PoolCollector",
    "model_label",
    "model_labels",
    "requests_for",
]

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "inference_objective_request_total",
    "Requests routed, by the model asked for, the model served and the objective priority.",
    ["model_name", "target_model_name", "priority"],
    registry=REGISTRY,
)
REQUEST_ERRORS = Counter(
    "inference_objective_request_error_total",
    "Requests that failed, by model and error code: epp's own answers (the code it "
    "sent) and model-server responses >= 400 (model_server_error).",
    ["model_name", "target_model_name", "error_code"],
    registry=REGISTRY,
)
SCHEDULER_DURATION = Histogram(
    "inference_extension_scheduler_e2e_duration_seconds",
    "Time to choose an endpoint for one request.",
    # The reference's buckets (100 us to 100 ms) and finer ones below: epp's scheduling
    # takes tens of microseconds.
    buckets=(
        0.00001,
        0.00002,
        0.00005,
        0.0001,
        0.0002,
        0.0005,
        0.001,
        0.002,
        0.005,
        0.01,
        0.02,
        0.05,
        0.1,
    ),
    registry=REGISTRY,
)


class ModelLabels:
    """Which model names get metric series of their own.

    Model names come from clients, and each (model, target model) pair costs about 240
    lines of ``/metrics`` (the per-request histograms). So a name longer than
    ``max_chars`` never becomes a label, and past ``max_series`` distinct names (and
    pairs), new ones are counted under ``OTHER_MODELS``: whatever clients send, the page
    stays bounded (about ``max_series`` x 240 lines), and so does epp's memory.
    """

    __slots__ = ("_names", "_pairs", "max_chars", "max_series")

    def __init__(self, max_series: int = 64, max_chars: int = 128) -> None:
        self.max_series = max_series
        self.max_chars = max_chars
        self._names: set[str] = set()
        self._pairs: set[tuple[str, str]] = set()

    def name(self, model: str) -> str:
        """``model`` as a label value: itself, or OTHER_MODELS."""
        names = self._names
        if model in names:
            return model
        if len(names) < self.max_series and len(model) <= self.max_chars:
            names.add(model)
            return model
        return OTHER_MODELS

    def pair(self, model: str, target: str) -> tuple[str, str]:
        """The (model, target model) label values: themselves, or both OTHER_MODELS."""
        key = (model, target)
        pairs = self._pairs
        if key in pairs:
            return key
        if (
            len(pairs) < self.max_series
            and len(model) <= self.max_chars
            and len(target) <= self.max_chars
        ):
            pairs.add(key)
            return key
        return OTHER_MODELS, OTHER_MODELS


OTHER_MODELS = "__other__"
MODEL_LABELS = ModelLabels()


def model_label(model: str) -> str:
    """``model`` as a metric label value (see :class:`ModelLabels`)."""
    return MODEL_LABELS.name(model)


def model_labels(model: str, target: str) -> tuple[str, str]:
    """The (model, target model) label values (see :class:`ModelLabels`)."""
    return MODEL_LABELS.pair(model, target)


_requests_by_model: dict[tuple[str, str, int], Counter] = {}


def requests_for(model: str, target_model: str, priority: int = 0) -> Counter:
    """The request counter's child for a model pair (``labels()`` costs a lock and a tuple)."""
    model, target_model = model_labels(model, target_model)
    key = (model, target_model, priority)
    child = _requests_by_model.get(key)
    if child is None:
        if len(_requests_by_model) >= 1024:  # priorities come from the operator, but bound it
            _requests_by_model.clear()
        child = _requests_by_model[key] = REQUESTS.labels(model, target_model, str(priority))
    return child


MODEL_FALLBACKS = Counter(
    "epp_model_fallback_total",
    "Requests served by a fallback model because their model had no ready, healthy endpoint.",
    ["model_name", "fallback_model_name"],
    registry=REGISTRY,
)
ENDPOINT_EJECTIONS = Counter(
    "epp_endpoint_ejections_total",
    "Times an endpoint was set aside for a back-off after a failed request (passive health).",
    registry=REGISTRY,
)

STREAM_ERRORS = Counter(
    "epp_extproc_stream_errors_total",
    "ext_proc streams epp failed: reason protocol (the peer broke the ext_proc protocol: "
    "messages out of order, bytes that are no ProcessingRequest), exception (an epp bug).",
    ["reason"],
    registry=REGISTRY,
)

UNMATCHED_READINGS = Counter(
    "epp_response_readings_unmatched_total",
    "Response readings (source access_log: an Envoy access log entry; observer: an "
    "observing stream) that found no single routing stream waiting for their request id: "
    "requests epp answered itself, a request id two requests in flight share, or readings "
    "that came more than a second after their response ended.",
    ["source"],
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
        in_backoff: Callable[[Endpoint], bool] | None = None,
    ) -> None:
        self._endpoints = endpoints
        self._is_ready = is_ready
        self._in_backoff = in_backoff
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
        unhealthy = GaugeMetricFamily(
            "epp_endpoint_unhealthy",
            "1 while the endpoint is avoided after a failed request (passive health back-off).",
            labels=per_endpoint,
        )
        for ep in endpoints:
            inflight.add_metric([ep.address], ep.inflight_requests)
            failures.add_metric([ep.address], ep.scrape_failures)
            stale.add_metric([ep.address], 0 if ep.is_fresh(self._staleness_s) else 1)
            if self._in_backoff is not None:
                unhealthy.add_metric([ep.address], 1 if self._in_backoff(ep) else 0)
        return [ready_pods, kv, queue, inflight, failures, stale, unhealthy]


class BodyMemoryCollector(Collector):
    """The request-body memory budget: bytes held now, the limit, and refusals."""

    def __init__(self, held: Callable[[], int], refused: Callable[[], int], limit: int) -> None:
        self._held = held
        self._refused = refused
        self._limit = limit

    def collect(self) -> Iterable[Metric]:
        held = GaugeMetricFamily(
            "epp_request_body_bytes_held",
            "Request body bytes epp holds now, gathered before routing or being handed back.",
        )
        held.add_metric([], self._held())
        limit = GaugeMetricFamily(
            "epp_request_body_bytes_limit",
            "The budget for request body bytes held at once (--max-buffered-body-bytes; 0: none).",
        )
        limit.add_metric([], self._limit)
        refused = CounterMetricFamily(
            "epp_request_body_budget_refusals",
            "Requests answered 503 overloaded because their body did not fit the budget.",
        )
        refused.add_metric([], self._refused())
        return [held, limit, refused]
