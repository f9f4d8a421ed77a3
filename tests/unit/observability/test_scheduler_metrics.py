"""The scheduler's statistics on /metrics: found by protocol, cumulative across swaps."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.distribution import Distribution
from epp.observability.scheduler_metrics import SchedulerView
from epp.observability.state_metrics import StateCollector
from epp.scheduling.config import default_scheduler_config, load_only_scheduler_config
from epp.scheduling.scheduler import Scheduler, build_scheduler
from epp.scheduling.stats import PREFIX_HIT_BYTES_BOUNDS, PREFIX_HIT_RATIO_BOUNDS
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
    prompt = "x" * 64 * 4  # 4 blocks of the default 64 bytes
    for n in range(3):
        scheduler.schedule(LLMRequest(f"r{n}", "m", prompt), eps)
    assert get(f"{RATIO}_count") == 3
    assert get(f"{RATIO}_sum") == 2.0  # nothing held at the first pick, all of it after
    assert get(f"{RATIO}_bucket", {"le": "0.0"}) == 1
    assert get(f"{BYTES}_sum") == 2 * 4 * 64
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
    schedulers[-1].schedule(LLMRequest("r1", "m", "y" * 128), eps)
    assert get(f"{RATIO}_count") == 1
    schedulers[-1].schedule(LLMRequest("r2", "m", "y" * 128), eps)  # after the last scrape
    schedulers.append(build_scheduler(load_only_scheduler_config()))  # no prefix plugin
    assert get(f"{RATIO}_count") == 2
    assert get(SIZE) == 0  # a gauge of the index in use
    schedulers.append(build_scheduler(default_scheduler_config()))
    schedulers[-1].schedule(LLMRequest("r3", "m", "y" * 128), eps)
    assert get(f"{RATIO}_count") == 3
    assert get(f"{RATIO}_sum") == 1.0  # r2 found all of r1's prefix; r1 and r3 nothing
