"""The scheduler's statistics on /metrics: found by protocol, cumulative across swaps."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.distribution import Distribution
from epp.observability.scheduler_metrics import SchedulerView
from epp.observability.state_metrics import StateCollector
from epp.scheduling.scheduler import Scheduler, build_scheduler
from epp.scheduling.spec import default_scheduler_config, load_only_scheduler_config
from epp.scheduling.stats import PREFIX_HIT_BYTES_BOUNDS, PREFIX_HIT_RATIO_BOUNDS, PluginTiming
from epp.scheduling.types import LLMRequest, Plugin, TypedName

RATIO = "inference_extension_prefix_indexer_hit_ratio"
BYTES = "inference_extension_prefix_indexer_hit_bytes"
SIZE = "inference_extension_prefix_indexer_size"


def registry_of(scheduler: Callable[[], SchedulerView]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StateCollector(list, scheduler))  # as epp.server wires it
    return registry


def fresh_endpoints(count: int) -> list[Endpoint]:
    now = time.monotonic()
    return [Endpoint(f"10.0.0.{i}:8000", metrics=Metrics(updated_at=now)) for i in range(count)]


def test_prefix_statistics_after_scheduling() -> None:
    scheduler = build_scheduler(default_scheduler_config())
    registry = registry_of(lambda: scheduler)
    get = registry.get_sample_value
    assert get(f"{RATIO}_count") == 0  # exported before the first pick
    eps = fresh_endpoints(2)
    prompt = "x" * 256 * 4  # 4 blocks of the default 256 bytes
    for n in range(3):
        scheduler.schedule(LLMRequest(f"r{n}", "m", prompt), eps)
    assert get(f"{RATIO}_count") == 3
    assert get(f"{RATIO}_sum") == 2.0  # nothing held at the first pick, all of it after
    assert get(f"{RATIO}_bucket", {"le": "0.0"}) == 1
    assert get(f"{BYTES}_sum") == 2 * 4 * 256
    assert get(SIZE) == 4  # one endpoint got all three: its 4 blocks


class _PrefixStatsPlugin:
    """Not the prefix-cache-scorer: observability must find it by its protocol alone."""

    typed_name = TypedName("some-prefix-plugin", "p")

    def __init__(self) -> None:
        self.hit_ratios = Distribution(PREFIX_HIT_RATIO_BOUNDS)
        self.hit_bytes = Distribution(PREFIX_HIT_BYTES_BOUNDS)

    def index_entries(self) -> int:
        return 7


class _View:
    def __init__(self, *plugins: Plugin) -> None:
        self.plugins = plugins
        self.timings: tuple[PluginTiming, ...] = ()


def test_any_plugin_with_prefix_stats_is_exported_and_several_add_up() -> None:
    one, two = _PrefixStatsPlugin(), _PrefixStatsPlugin()
    one.hit_bytes.observe(64)
    two.hit_bytes.observe(128)
    registry = registry_of(lambda: _View(one, two))
    assert registry.get_sample_value(f"{BYTES}_count") == 2
    assert registry.get_sample_value(f"{BYTES}_sum") == 192
    assert registry.get_sample_value(SIZE) == 14


def test_counts_carry_over_when_the_scheduler_is_swapped() -> None:
    schedulers: list[Scheduler] = [build_scheduler(default_scheduler_config())]
    registry = registry_of(lambda: schedulers[-1])
    get = registry.get_sample_value
    eps = fresh_endpoints(2)
    schedulers[-1].schedule(LLMRequest("r1", "m", "y" * 512), eps)
    assert get(f"{RATIO}_count") == 1
    schedulers[-1].schedule(LLMRequest("r2", "m", "y" * 512), eps)  # after the last scrape
    schedulers.append(build_scheduler(load_only_scheduler_config()))  # no prefix plugin
    assert get(f"{RATIO}_count") == 2
    assert get(SIZE) == 0  # a gauge of the index in use
    schedulers.append(build_scheduler(default_scheduler_config()))
    schedulers[-1].schedule(LLMRequest("r3", "m", "y" * 512), eps)
    assert get(f"{RATIO}_count") == 3
    assert get(f"{RATIO}_sum") == 1.0  # r2 found all of r1's prefix; r1 and r3 nothing


DURATION = "inference_extension_plugin_duration_seconds"


def test_every_plugin_call_is_in_the_duration_histogram() -> None:
    scheduler = build_scheduler(default_scheduler_config())
    registry = registry_of(lambda: scheduler)
    eps = fresh_endpoints(3)
    for n in range(5):
        scheduler.schedule(LLMRequest(f"r{n}", "m", "z" * 600), eps)
    counts = {
        (s.labels["extension_point"], s.labels["plugin_type"], s.labels["plugin_name"]): s.value
        for family in registry.collect()
        if family.name == DURATION
        for s in family.samples
        if s.name == f"{DURATION}_count"
    }
    assert counts == {
        ("Filter", "candidate-sample-filter", "candidate-sample-filter"): 5,
        ("Filter", "prefer-fresh-filter", "prefer-fresh-filter"): 5,
        ("Scorer", "queue-scorer", "queue-scorer"): 5,
        ("Scorer", "prefix-cache-scorer", "prefix-cache-scorer"): 5,
        ("Scorer", "inflight-load-scorer", "inflight-load-scorer"): 5,
        ("Scorer", "lora-affinity-scorer", "lora-affinity-scorer"): 5,
        ("Scorer", "no-hit-lru-scorer", "no-hit-lru-scorer"): 5,
        ("Picker", "max-score-picker", "max-score-picker"): 5,
        ("PreRequest", "prefix-cache-scorer", "prefix-cache-scorer"): 5,
        ("PreRequest", "lora-affinity-scorer", "lora-affinity-scorer"): 5,
        ("PreRequest", "no-hit-lru-scorer", "no-hit-lru-scorer"): 5,
    }
    labels = {
        "extension_point": "Scorer",
        "plugin_type": "queue-scorer",
        "plugin_name": "queue-scorer",
    }
    get = registry.get_sample_value
    assert get(f"{DURATION}_bucket", {**labels, "le": "+Inf"}) == 5
    assert get(f"{DURATION}_bucket", {**labels, "le": "1e-06"}) is not None  # 1 us, in seconds
    assert get(f"{DURATION}_bucket", {**labels, "le": "0.1"}) is not None  # the reference's last
    total = get(f"{DURATION}_sum", labels)
    assert total is not None and 0 < total < 5  # seconds, not nanoseconds


def test_durations_carry_over_a_swap_to_plugins_of_the_same_names() -> None:
    schedulers = [build_scheduler(default_scheduler_config())]
    registry = registry_of(lambda: schedulers[-1])
    eps = fresh_endpoints(2)
    labels = {
        "extension_point": "Picker",
        "plugin_type": "max-score-picker",
        "plugin_name": "max-score-picker",
    }
    schedulers[-1].schedule(LLMRequest("r1", "m", ""), eps)
    assert registry.get_sample_value(f"{DURATION}_count", labels) == 1
    schedulers.append(build_scheduler(default_scheduler_config()))
    schedulers[-1].schedule(LLMRequest("r2", "m", ""), eps)
    assert registry.get_sample_value(f"{DURATION}_count", labels) == 2
