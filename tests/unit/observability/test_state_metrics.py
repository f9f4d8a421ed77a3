"""Read at scrape time: the scheduler's prefix index size, metrics age, scrape errors."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.observability.state_metrics import StateCollector
from epp.scheduling.registry import PluginRegistry, register_builtin_plugins
from epp.scheduling.scheduler import build_scheduler, default_scheduler_config
from epp.scheduling.types import LLMRequest


def test_collector_reports_index_entries_age_and_errors() -> None:
    scheduler = build_scheduler(
        default_scheduler_config(), register_builtin_plugins(PluginRegistry())
    )
    fresh, failing = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    fresh.metrics = Metrics(updated_at=97.5)
    fresh.scrape_errors_total = 2
    scheduler.schedule(LLMRequest("r", "m", "x" * 256 * 3), [fresh])  # 3 blocks of 256 bytes

    registry = CollectorRegistry()
    registry.register(
        StateCollector(lambda: [fresh, failing], lambda: scheduler, clock=lambda: 100.0)
    )
    get = registry.get_sample_value
    assert get("inference_extension_prefix_indexer_size") == 3
    assert get("epp_endpoint_metrics_age_seconds", {"endpoint": fresh.address}) == 2.5
    assert get("epp_endpoint_metrics_age_seconds", {"endpoint": failing.address}) is None
    assert get("epp_endpoint_scrape_errors_total", {"endpoint": fresh.address}) == 2
    assert get("epp_endpoint_scrape_errors_total", {"endpoint": failing.address}) == 0


def test_model_labels_are_bounded_in_count() -> None:
    from epp.observability.metrics import OTHER_MODELS, ModelLabels

    labels = ModelLabels(max_series=8)
    names = [f"invented-{n}" for n in range(20)]
    assigned = [labels.name(name) for name in names]
    assert assigned[:8] == names[:8]
    assert set(assigned[8:]) == {OTHER_MODELS}
    assert labels.name(names[0]) == names[0]  # a known name stays itself
    pairs = [labels.pair(name, "target") for name in names]
    assert pairs[:8] == [(name, "target") for name in names[:8]]
    assert set(pairs[8:]) == {(OTHER_MODELS, OTHER_MODELS)}
    assert labels.pair(names[3], "target") == (names[3], "target")


def test_model_labels_are_bounded_in_length() -> None:
    from epp.observability.metrics import OTHER_MODELS, ModelLabels

    labels = ModelLabels(max_series=8, max_chars=16)
    assert labels.name("x" * 16) == "x" * 16
    assert labels.name("y" * 17) == OTHER_MODELS
    assert labels.pair("short", "z" * 17) == (OTHER_MODELS, OTHER_MODELS)
    assert labels.pair("z" * 17, "short") == (OTHER_MODELS, OTHER_MODELS)
    # Names refused for their length took no room from the names that fit.
    assert [labels.name(f"n{i}") for i in range(7)] == [f"n{i}" for i in range(7)]
