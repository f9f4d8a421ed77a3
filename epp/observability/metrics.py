"""epp's own Prometheus metrics, named like the reference EPP's where one exists.

Names, labels and buckets of the reference's follow llm-d-router v0.10 (``pkg/epp/
metrics/``, ``docs/metrics.md``): the current ``llm_d_epp_*`` names, and the deprecated
``inference_objective_*`` / ``inference_pool_*`` / ``inference_extension_*`` ones exported
beside them until epp 1.0 (:mod:`epp.observability.naming`). The per-request ones are in
:mod:`epp.observability.request_metrics`, the scheduler's plugins' in
:mod:`epp.observability.scheduler_metrics`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.datalayer.endpoint import Endpoint
from epp.observability.histograms import FastCounterVec, FastHistogramVec, Legacy, Value
from epp.observability.naming import DEFAULT_FAIRNESS_ID, legacy_names

__all__ = [
    "ENDPOINT_EJECTIONS",
    "INFERENCE_MODELS_IGNORED",
    "MODEL_FALLBACKS",
    "MODEL_LABELS",
    "MODEL_REWRITES",
    "MODEL_SELECTIONS",
    "MODEL_SELECTION_FUNCTION_FAILURES",
    "OTHER_MODELS",
    "PICKS_RELEASED",
    "REGISTRY",
    "REQUESTS",
    "REQUEST_BODY_MODES",
    "REQUEST_ERRORS",
    "SCHEDULER_ATTEMPTS",
    "SCHEDULER_DURATION",
    "STREAM_ERRORS",
    "BodyMemoryCollector",
    "InfoCollector",
    "ModelLabels",
    "PoolCollector",
    "ScraperCollector",
    "ScraperView",
    "errors_for",
    "model_label",
    "model_labels",
    "model_selected",
    "request_labels",
    "requests_for",
    "rewrite_decided",
    "scheduler_attempt",
]

REGISTRY = CollectorRegistry(auto_describe=True)

# The labels of the reference's request metrics: the model asked for, the model served,
# the fairness id (x-llm-d-inference-fairness-id) and the objective's priority.
REQUEST_LABELS = ("model_name", "target_model_name", "fairness_id", "priority")

REQUESTS = FastCounterVec(
    "llm_d_epp_request_total",
    "Requests routed, by the model asked for, the model served, fairness id and priority.",
    REQUEST_LABELS,
    registry=REGISTRY,
    legacy=Legacy(
        "inference_objective_request_total",
        "[Deprecated: use llm_d_epp_request_total] Requests routed, by model, target "
        "model and priority.",
        ("model_name", "target_model_name", "priority"),
    ),
)
REQUEST_ERRORS = FastCounterVec(
    "llm_d_epp_request_error_total",
    "Requests that failed, by model and error code: epp's own answers (the code it "
    "sent) and model-server responses >= 400 (model_server_error).",
    (*REQUEST_LABELS, "error_code"),
    registry=REGISTRY,
    legacy=Legacy(
        "inference_objective_request_error_total",
        "[Deprecated: use llm_d_epp_request_error_total] Requests that failed, by model, "
        "target model and error code.",
        ("model_name", "target_model_name", "error_code"),
    ),
)
SCHEDULER_DURATION = FastHistogramVec(
    "llm_d_epp_scheduler_e2e_duration_seconds",
    "Time to choose an endpoint for one request.",
    (),
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
    legacy=Legacy(
        "inference_extension_scheduler_e2e_duration_seconds",
        "[Deprecated: use llm_d_epp_scheduler_e2e_duration_seconds] Time to choose an "
        "endpoint for one request.",
    ),
)
# Scheduling attempts, by outcome and the endpoint picked. epp knows endpoints by address:
# endpoint_name is its host (a pod's IP), port its port, namespace the pool's ("" with
# static endpoints). The legacy family names the endpoint pod_name.
SCHEDULER_ATTEMPTS = FastCounterVec(
    "llm_d_epp_scheduler_attempts_total",
    "Scheduling attempts: status success (an endpoint was picked) or failure (none "
    "could be), by target model and the endpoint picked.",
    ("status", "target_model_name", "endpoint_name", "namespace", "port"),
    registry=REGISTRY,
)
_LEGACY_SCHEDULER_ATTEMPTS = "inference_extension_scheduler_attempts_total"
MODEL_REWRITES = FastCounterVec(
    "llm_d_epp_model_rewrite_decisions_total",
    "Requests whose model a rewrite rule changed, by rule, the model asked for and the "
    "model chosen.",
    ("model_rewrite_name", "model_name", "target_model"),
    registry=REGISTRY,
    legacy=Legacy(
        "inference_extension_model_rewrite_decisions_total",
        "[Deprecated: use llm_d_epp_model_rewrite_decisions_total] Model rewrite decisions.",
        ("model_rewrite_name", "model_name", "target_model"),
    ),
)


class ModelLabels:
    """Which model names (and other client-chosen label values) get series of their own.

    Model names come from clients, and each (model, target model) pair costs about 240
    lines of ``/metrics`` (the per-request histograms). So a name longer than
    ``max_chars`` never becomes a label, and past ``max_series`` distinct names (pairs,
    request label sets), new ones are counted under ``OTHER_MODELS``: whatever clients
    send, the page stays bounded (about ``max_series`` x 240 lines), and so does epp's
    memory.
    """

    __slots__ = ("_names", "_pairs", "_sets", "max_chars", "max_series")

    def __init__(self, max_series: int = 64, max_chars: int = 128) -> None:
        self.max_series = max_series
        self.max_chars = max_chars
        self._names: set[str] = set()
        self._pairs: set[tuple[str, str]] = set()
        self._sets: set[tuple[str, ...]] = set()

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

    def label_set(self, values: tuple[str, ...]) -> tuple[str, ...]:
        """A request's label values (model, target, fairness id, priority): themselves,
        or every one OTHER_MODELS. Bounded as a whole, so the fairness ids clients send
        cannot multiply the series of the models they name."""
        sets = self._sets
        if values in sets:
            return values
        if len(sets) < self.max_series and all(len(v) <= self.max_chars for v in values):
            sets.add(values)
            return values
        return (OTHER_MODELS,) * len(values)


OTHER_MODELS = "__other__"
MODEL_LABELS = ModelLabels()


def model_label(model: str) -> str:
    """``model`` as a metric label value (see :class:`ModelLabels`)."""
    return MODEL_LABELS.name(model)


def model_labels(model: str, target: str) -> tuple[str, str]:
    """The (model, target model) label values (see :class:`ModelLabels`)."""
    return MODEL_LABELS.pair(model, target)


def request_labels(
    model: str, target: str, fairness_id: str, priority: int
) -> tuple[str, str, str, str]:
    """The label values of a request's series (see :class:`ModelLabels`)."""
    values = MODEL_LABELS.label_set(
        (model, target, fairness_id or DEFAULT_FAIRNESS_ID, str(priority))
    )
    return values[0], values[1], values[2], values[3]


_requests_by_labels: dict[tuple[str, str, str, int], Value] = {}


def requests_for(model: str, target_model: str, priority: int = 0, fairness_id: str = "") -> Value:
    """The request counter's child for a request's labels (kept: a lookup is cheaper)."""
    key = (model, target_model, fairness_id, priority)
    child = _requests_by_labels.get(key)
    if child is None:
        if len(_requests_by_labels) >= 1024:  # bounded, whatever clients send
            _requests_by_labels.clear()
        child = _requests_by_labels[key] = REQUESTS.labels(
            *request_labels(model, target_model, fairness_id, priority)
        )
    return child


def errors_for(
    model: str, target_model: str, code: str, priority: int = 0, fairness_id: str = ""
) -> Value:
    """The error counter's child for a request's labels and an error code."""
    return REQUEST_ERRORS.labels(*request_labels(model, target_model, fairness_id, priority), code)


def scheduler_attempt(target_model: str, endpoint: Endpoint | None, namespace: str = "") -> None:
    """Count one scheduling attempt: ``endpoint`` the pick, ``None`` a failure."""
    target = model_label(target_model)
    if endpoint is None:
        SCHEDULER_ATTEMPTS.labels("failure", target, "", "", "").inc()
        return
    host, _, port = endpoint.address.rpartition(":")
    SCHEDULER_ATTEMPTS.labels("success", target, host.strip("[]"), namespace, port).inc()


def rewrite_decided(rule: str, model: str, target: str) -> None:
    """A rewrite rule sent a request for ``model`` to ``target``."""
    # The rule and its targets are the operator's; the model asked for is the client's.
    MODEL_REWRITES.labels(rule, model_label(model), target).inc()


def model_selected(rule: str, model: str) -> None:
    """The selector chose ``model`` by ``rule`` (a configured rule, function or default)."""
    # Rule names are the operator's; a function's answer is bounded like any model name.
    MODEL_SELECTIONS.labels(rule, model_label(model)).inc()


class InfoCollector(Collector):
    """``llm_d_epp_info`` (and its legacy twin): 1, labelled with what is running.

    ``commit`` and ``build_ref`` are the reference's labels, read from ``EPP_COMMIT`` and
    ``EPP_BUILD_REF`` (set when the image is built; "unknown" otherwise); ``version`` is
    epp's.
    """

    def __init__(self, version: str, environ: Mapping[str, str] = os.environ) -> None:
        self._labels = (
            environ.get("EPP_COMMIT", "unknown")[:64],
            environ.get("EPP_BUILD_REF", "unknown")[:128],
            version,
        )

    def collect(self) -> Iterable[Metric]:
        names = [("llm_d_epp_info", "")]
        if legacy_names():
            names.append(("inference_extension_info", "[Deprecated: use llm_d_epp_info] "))
        families: list[Metric] = []
        for name, deprecated in names:
            family = GaugeMetricFamily(
                name,
                deprecated + "Build information of the running epp; always 1.",
                labels=["commit", "build_ref", "version"],
            )
            family.add_metric(list(self._labels), 1)
            families.append(family)
        return families


class _LegacySchedulerAttempts(Collector):
    """The attempts counter under its legacy name, whose endpoint label is pod_name."""

    def collect(self) -> Iterable[Metric]:
        if not legacy_names():
            return []
        family = CounterMetricFamily(
            _LEGACY_SCHEDULER_ATTEMPTS,
            "[Deprecated: use llm_d_epp_scheduler_attempts_total] Scheduling attempts.",
            labels=["status", "target_model_name", "pod_name", "namespace", "port"],
        )
        for values, child in SCHEDULER_ATTEMPTS._children.copy().items():
            family.add_metric(list(values), child.value)
        return [family]


REGISTRY.register(_LegacySchedulerAttempts())

MODEL_FALLBACKS = Counter(
    "epp_model_fallback_total",
    "Requests served by a fallback model because their model had no ready, healthy endpoint.",
    ["model_name", "fallback_model_name"],
    registry=REGISTRY,
)
# A gauge, not a counter: every change of any InferenceModel re-reads them all, and what
# an operator needs is how many are ignored now (the log says which and why).
INFERENCE_MODELS_IGNORED = Gauge(
    "epp_inference_models_ignored",
    "InferenceModels naming epp's pool that epp ignores: reason invalid (a field it cannot "
    "use) or duplicate (an older InferenceModel of the pool has the same modelName).",
    ["reason"],
    registry=REGISTRY,
)
MODEL_SELECTIONS = Counter(
    "epp_model_selections_total",
    'Requests for the selector model ("auto") by the rule that chose their model (a '
    "configured rule's name, function or default) and the model chosen.",
    ["rule", "model_name"],
    registry=REGISTRY,
)
MODEL_SELECTION_FUNCTION_FAILURES = Counter(
    "epp_model_selection_function_failures_total",
    "Calls of the model-selection function whose answer was not used, by reason: error "
    "(it raised), invalid (no model name), slow (over its budget), paused (left out "
    "after a slow call).",
    ["reason"],
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

# Once per request with a body, from the mode Envoy declared on its stream: which bodies
# came whole and which in chunks (a gateway's per-route modes show here).
REQUEST_BODY_MODES = FastCounterVec(
    "epp_extproc_request_body_mode_total",
    "Requests whose body reached epp, by the ext_proc request body mode Envoy sent it in: "
    "FULL_DUPLEX_STREAMED (in chunks, each handed back), BUFFERED (whole, in one message), "
    "another mode of the protocol, or unknown.",
    ["mode"],
    registry=REGISTRY,
)

PICKS_RELEASED = Counter(
    "epp_pick_released_unfinished_total",
    "Pick API picks epp released without a Finish: reason timeout (none came within "
    "--pick-timeout), evicted (the oldest, when --pick-max-outstanding picks were unfinished).",
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
    """Gauges computed at scrape time from the endpoint table (nothing to keep in sync).

    The pool averages and spreads are over ready endpoints, as the reference's are over
    pods with fresh metrics; running requests are what the model servers report.
    """

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
        legacy = legacy_names()
        pool = [self._pool]
        families: list[Metric] = []

        def gauge(name: str, help_text: str, value: float | None, old: str = "") -> None:
            names = [(name, help_text)]
            if old and legacy:
                names.append((old, f"[Deprecated: use {name}] {help_text}"))
            for family_name, text in names:
                family = GaugeMetricFamily(family_name, text, labels=["name"])
                if value is not None:
                    family.add_metric(pool, value)
                families.append(family)

        gauge(
            "llm_d_epp_ready_endpoints",
            "Endpoints that are candidates for routing.",
            len(ready),
            "inference_pool_ready_pods",
        )
        signals: tuple[tuple[str, str, Callable[[Endpoint], float], str], ...] = (
            (
                "kv_cache_utilization",
                "KV-cache utilization",
                lambda ep: ep.metrics.kv_cache_usage,
                "inference_pool_average_kv_cache_utilization",
            ),
            (
                "queue_size",
                "waiting requests",
                lambda ep: ep.metrics.waiting_requests,
                "inference_pool_average_queue_size",
            ),
            (
                "running_requests",
                "running requests (as the model servers report them)",
                lambda ep: ep.metrics.running_requests,
                "inference_pool_average_running_requests",
            ),
        )
        for signal, what, read, old in signals:
            mean = spread = None
            if ready:
                values = [float(read(ep)) for ep in ready]
                mean = math.fsum(values) / len(values)
                spread = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
            gauge(f"llm_d_epp_average_{signal}", f"Mean {what} over ready endpoints.", mean, old)
            gauge(
                f"llm_d_epp_std_dev_{signal}",
                f"Standard deviation of {what} over ready endpoints.",
                spread,
            )
        per_endpoint_queue = [
            ("llm_d_epp_per_endpoint_queue_size", "model_server_endpoint", ""),
        ]
        if legacy:
            per_endpoint_queue.append(
                (
                    "inference_pool_per_pod_queue_size",
                    "model_server_pod",
                    "[Deprecated: use llm_d_epp_per_endpoint_queue_size] ",
                )
            )
        for name, label, deprecated in per_endpoint_queue:
            family = GaugeMetricFamily(
                name,
                deprecated + "Waiting requests of each endpoint, as last scraped.",
                labels=["name", label],
            )
            for ep in endpoints:
                family.add_metric([self._pool, ep.address], ep.metrics.waiting_requests)
            families.append(family)
        per_endpoint = ["endpoint"]
        inflight = GaugeMetricFamily(
            "epp_endpoint_inflight_requests",
            "Requests epp routed to the endpoint whose streams have not ended (with "
            "--sync-redis-url, those the other replicas report too).",
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
        return [*families, inflight, failures, stale, unhealthy]


class ScraperView(Protocol):
    """What the metrics scraper (in the loop or in a process) tells about itself."""

    @property
    def polls_total(self) -> int: ...

    @property
    def restarts_total(self) -> int: ...

    @property
    def running(self) -> bool: ...


class ScraperCollector(Collector):
    """The scraper's own health: polls made, restarts of its process, whether it is up."""

    def __init__(self, scraper: ScraperView) -> None:
        self._scraper = scraper

    def collect(self) -> Iterable[Metric]:
        polls = CounterMetricFamily(
            "epp_scraper_polls", "Polls of endpoints' /metrics started by the scraper."
        )
        polls.add_metric([], self._scraper.polls_total)
        restarts = CounterMetricFamily(
            "epp_scraper_restarts",
            "Times the scraper process failed (exited, hung, or broke its protocol) and was "
            "restarted.",
        )
        restarts.add_metric([], self._scraper.restarts_total)
        up = GaugeMetricFamily(
            "epp_scraper_up", "1 while the scraper runs (its process is up and talking)."
        )
        up.add_metric([], 1 if self._scraper.running else 0)
        return [polls, restarts, up]


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
