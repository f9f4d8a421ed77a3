"""Every metric under its current llm_d_epp_* name, and its deprecated twin built from the
same records while --legacy-metric-names is on (the default)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.observability import metrics, naming, request_metrics
from epp.observability.histograms import FastHistogramVec, Legacy
from epp.observability.metrics import REGISTRY
from epp.requestcontrol.rewrite import ModelRewrites, RewriteRule
from epp.routing import RoutingDecision
from epp.scheduling.types import LLMRequest
from tests.unit.directors import director_over, fresh_store

get = REGISTRY.get_sample_value


@pytest.fixture
def legacy_off() -> Iterator[None]:
    naming.set_legacy_names(False)
    try:
        yield
    finally:
        naming.set_legacy_names(True)


def finished(model: str, *, fairness: str = "", priority: int = 0, streamed: bool) -> None:
    """A routed request whose response completed, recorded as the stream would."""
    decision = RoutingDecision(
        LLMRequest("r", model, ""), [], "", 1, priority=priority, fairness_id=fairness
    )
    request_metrics.request_started(decision)
    start = time.monotonic()
    response = decision.response
    response.status, response.streamed, response.completed = 200, streamed, True
    response.first_token_at, response.ended_at = start + 0.3, start + 0.5
    request_metrics.record_finished(
        request_metrics.FinishedRequest("r", start, decision=decision, request_bytes=100)
    )


def test_a_request_is_counted_under_both_names_with_their_labels() -> None:
    model = "names-both"
    finished(model, fairness="tenant-a", priority=2, streamed=True)
    finished(model, fairness="tenant-b", priority=2, streamed=True)
    new = {"model_name": model, "target_model_name": model, "priority": "2"}
    old = {"model_name": model, "target_model_name": model}
    for fairness in ("tenant-a", "tenant-b"):
        labels = {**new, "fairness_id": fairness}
        assert get("llm_d_epp_request_duration_seconds_count", labels) == 1
        assert get("llm_d_epp_request_size_bytes_sum", labels) == 100
        assert get("llm_d_epp_request_running", labels) == 0
    # The legacy series are the sums over the labels they lack.
    assert get("inference_objective_request_duration_seconds_count", old) == 2
    assert get("inference_objective_request_sizes_sum", old) == 200
    assert get("inference_objective_running_requests", {"model_name": model}) == 0


def test_a_request_without_a_fairness_id_counts_as_the_default_flow() -> None:
    model = "names-default-flow"
    metrics.requests_for(model, model).inc()
    labels = {"model_name": model, "target_model_name": model, "priority": "0"}
    assert get("llm_d_epp_request_total", {**labels, "fairness_id": "default-flow"}) == 1
    assert get("inference_objective_request_total", labels) == 1


def test_ttft_current_name_has_streaming_and_the_reference_buckets() -> None:
    model = "names-ttft"
    finished(model, streamed=True)
    finished(model, streamed=False)
    labels = {"model_name": model, "target_model_name": model, "fairness_id": "default-flow"}
    labels["priority"] = "0"
    assert get("llm_d_epp_request_ttft_seconds_count", {**labels, "streaming": "true"}) == 1
    assert get("llm_d_epp_request_ttft_seconds_count", {**labels, "streaming": "false"}) == 1
    old = {"model_name": model, "target_model_name": model}
    # The legacy family kept its meaning: streamed responses only.
    assert get("inference_objective_request_ttft_seconds_count", old) == 1
    page = generate_latest(REGISTRY).decode()
    new_les = {
        line.split('le="')[1].split('"')[0]
        for line in page.splitlines()
        if line.startswith("llm_d_epp_request_ttft_seconds_bucket") and model in line
    }
    old_les = {
        line.split('le="')[1].split('"')[0]
        for line in page.splitlines()
        if line.startswith("inference_objective_request_ttft_seconds_bucket") and model in line
    }
    assert "120.0" in new_les and "180.0" not in new_les and "+Inf" in new_les
    assert "3600.0" in old_les


def test_histogram_views_cumulate_over_the_buckets_they_keep() -> None:
    registry = CollectorRegistry()
    vec = FastHistogramVec(
        "x_seconds",
        "h",
        ["a"],
        (1, 2, 3),
        registry,
        export_buckets=(2,),
        legacy=Legacy("old_x_seconds", "old", ()),
    )
    for a, value in (("p", 0.5), ("p", 1.5), ("q", 2.5), ("q", 9)):
        vec.labels(a).observe(value)
    read = registry.get_sample_value
    assert read("x_seconds_bucket", {"a": "p", "le": "2.0"}) == 2
    assert read("x_seconds_bucket", {"a": "q", "le": "2.0"}) == 0
    assert read("x_seconds_bucket", {"a": "q", "le": "+Inf"}) == 2
    assert read("x_seconds_bucket", {"a": "p", "le": "1.0"}) is None  # not exported
    assert read("old_x_seconds_bucket", {"le": "3.0"}) == 3
    assert read("old_x_seconds_count") == 4 and read("old_x_seconds_sum") == 13.5


def test_legacy_names_can_be_turned_off(legacy_off: None) -> None:
    model = "names-off"
    finished(model, streamed=True)
    metrics.requests_for(model, model).inc()
    page = generate_latest(REGISTRY).decode()
    assert "llm_d_epp_request_total" in page
    assert "llm_d_epp_request_duration_seconds_bucket" in page
    families = {line.split()[2] for line in page.splitlines() if line.startswith("# TYPE")}
    assert not {f for f in families if f.startswith(("inference_objective", "inference_ext"))}


def test_pool_gauges_average_and_spread_under_both_names() -> None:
    a, b, down = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000"), Endpoint("10.0.0.3:8000")
    a.metrics = Metrics(waiting_requests=2, running_requests=4, kv_cache_usage=0.5)
    b.metrics = Metrics(waiting_requests=4, running_requests=8, kv_cache_usage=0.25)
    down.metrics = Metrics(waiting_requests=100, running_requests=100)
    registry = CollectorRegistry()
    registry.register(
        metrics.PoolCollector(lambda: [a, b, down], lambda ep: ep is not down, 2.0, "pool-x")
    )
    read = registry.get_sample_value
    pool = {"name": "pool-x"}
    for name in ("llm_d_epp_average_running_requests", "inference_pool_average_running_requests"):
        assert read(name, pool) == 6
    assert read("llm_d_epp_std_dev_running_requests", pool) == 2
    assert read("llm_d_epp_average_queue_size", pool) == 3
    assert read("inference_pool_average_queue_size", pool) == 3
    assert read("llm_d_epp_average_kv_cache_utilization", pool) == 0.375
    assert read("llm_d_epp_ready_endpoints", pool) == read("inference_pool_ready_pods", pool) == 2
    endpoint = {"name": "pool-x", "model_server_endpoint": down.address}
    assert read("llm_d_epp_per_endpoint_queue_size", endpoint) == 100
    pod = {"name": "pool-x", "model_server_pod": down.address}
    assert read("inference_pool_per_pod_queue_size", pod) == 100


def test_scheduler_attempts_name_the_endpoint_picked() -> None:
    store = fresh_store({"10.9.0.1:8000": ["attempts-m"]})
    director = director_over(store, namespace="ml")
    before = get(
        "llm_d_epp_scheduler_attempts_total",
        {
            "status": "success",
            "target_model_name": "attempts-m",
            "endpoint_name": "10.9.0.1",
            "namespace": "ml",
            "port": "8000",
        },
    )
    decision = director.route_body(b'{"model": "attempts-m"}', request_id="r", headers={})
    director.finish(decision)
    success = {"status": "success", "target_model_name": "attempts-m", "namespace": "ml"}
    success["port"] = "8000"
    assert (
        get("llm_d_epp_scheduler_attempts_total", {**success, "endpoint_name": "10.9.0.1"})
        == (before or 0) + 1
    )
    assert (
        get("inference_extension_scheduler_attempts_total", {**success, "pod_name": "10.9.0.1"})
        == (before or 0) + 1
    )


def test_rewrite_decisions_are_counted_by_rule() -> None:
    store = fresh_store({"10.9.0.2:8000": ["rw-new"]})
    rule = RewriteRule(frozenset({"rw-old"}), ("rw-new",), (1,), "canary")
    director = director_over(store, rewrites=ModelRewrites([rule]))
    decision = director.route_body(b'{"model": "rw-old"}', request_id="r", headers={})
    director.finish(decision)
    labels = {"model_rewrite_name": "canary", "model_name": "rw-old", "target_model": "rw-new"}
    assert get("llm_d_epp_model_rewrite_decisions_total", labels) == 1
    assert get("inference_extension_model_rewrite_decisions_total", labels) == 1


def test_info_names_the_build() -> None:
    registry = CollectorRegistry()
    registry.register(
        metrics.InfoCollector("9.9.9", {"EPP_COMMIT": "abc123", "EPP_BUILD_REF": "v9"})
    )
    labels = {"commit": "abc123", "build_ref": "v9", "version": "9.9.9"}
    assert registry.get_sample_value("llm_d_epp_info", labels) == 1
    assert registry.get_sample_value("inference_extension_info", labels) == 1
