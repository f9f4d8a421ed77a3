"""The scheduler's own statistics as Prometheus families, built when ``/metrics`` is read.

``epp.scheduling`` keeps them as plain data (:mod:`epp.scheduling.stats`). They are found
here through the scheduler's timings, plugins and the protocols those implement, never by
class, and exported under the reference EPP's names and labels:
``llm_d_epp_plugin_duration_seconds{extension_point, plugin_type, plugin_name}``,
``…_prefix_indexer_size`` (entries now), ``…_prefix_indexer_hit_ratio`` and
``…_prefix_indexer_hit_bytes`` (what the chosen endpoint held, per pick), the prefix ones
by ``plugin_name`` and ``plugin_type``; and, until epp 1.0, under their deprecated
``inference_extension_*`` names (the prefix ones summed over plugins, as the reference's).

A pool's routing-strategy annotation can swap the scheduler for one whose plugins count
from zero. What the plugins swapped out had counted is carried over, so the histograms
stay cumulative, as Prometheus expects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric

from epp.distribution import Distribution
from epp.observability.histograms import histogram_family
from epp.observability.naming import legacy_names
from epp.scheduling.stats import (
    PLUGIN_DURATION_BOUNDS_NS,
    PREFIX_HIT_BYTES_BOUNDS,
    PREFIX_HIT_RATIO_BOUNDS,
    PluginTiming,
    PrefixStats,
)
from epp.scheduling.types import Plugin

__all__ = ["SchedulerMetrics", "SchedulerView"]

_PLUGIN_DURATION = "llm_d_epp_plugin_duration_seconds"
_HIT_RATIO = "llm_d_epp_prefix_indexer_hit_ratio"
_HIT_BYTES = "llm_d_epp_prefix_indexer_hit_bytes"
_PLUGIN_LABELS = ("plugin_name", "plugin_type")


class _Histogram(NamedTuple):
    documentation: str
    labelnames: tuple[str, ...]
    unit: float  # what one of the family's units is in the data
    legacy: str  # the deprecated name
    legacy_labels: tuple[str, ...]  # the deprecated family's labels: all, or none (summed)
    bounds: tuple[float, ...]


_HISTOGRAMS: dict[str, _Histogram] = {
    _PLUGIN_DURATION: _Histogram(
        "Time one plugin call took, by extension point, plugin type and plugin name.",
        ("extension_point", "plugin_type", "plugin_name"),
        1e9,  # nanoseconds
        "inference_extension_plugin_duration_seconds",
        ("extension_point", "plugin_type", "plugin_name"),
        PLUGIN_DURATION_BOUNDS_NS,
    ),
    _HIT_RATIO: _Histogram(
        "Share of the prompt's prefix blocks the chosen endpoint was found to hold.",
        _PLUGIN_LABELS,
        1.0,
        "inference_extension_prefix_indexer_hit_ratio",
        (),
        PREFIX_HIT_RATIO_BOUNDS,
    ),
    _HIT_BYTES: _Histogram(
        "Length in bytes of the prompt prefix the chosen endpoint was found to hold.",
        _PLUGIN_LABELS,
        1.0,
        "inference_extension_prefix_indexer_hit_bytes",
        (),
        PREFIX_HIT_BYTES_BOUNDS,
    ),
}

# The reference's names of the extension points. epp's post-pick hook is where the prefix
# scorer records the pick, which the reference's does at PreRequest.
_EXTENSION_POINTS = {
    "filter": "Filter",
    "scorer": "Scorer",
    "picker": "Picker",
    "post_pick": "PreRequest",
}

_Series = tuple[str, tuple[str, ...]]  # a histogram family's name, one series' label values


class SchedulerView(Protocol):
    """What is read of the scheduler in use (an ``epp.scheduling.Scheduler``)."""

    @property
    def plugins(self) -> Sequence[Plugin]: ...

    @property
    def timings(self) -> Sequence[PluginTiming]: ...


class SchedulerMetrics:
    """The families of the scheduler ``scheduler()`` returns at each scrape."""

    def __init__(self, scheduler: Callable[[], SchedulerView]) -> None:
        self._scheduler = scheduler
        self._lock = threading.Lock()
        # The distributions the last scrape read, by id (held, so no id is reused).
        self._read: dict[int, tuple[_Series, Distribution]] = {}
        # What distributions no longer in use had counted.
        self._retired: dict[_Series, Distribution] = {}

    def collect(self) -> list[Metric]:
        scheduler = self._scheduler()
        live = list(_series(scheduler))
        with self._lock:
            read, self._read = self._read, {id(d): (series, d) for series, d in live}
            _add(self._retired, (gone for key, gone in read.items() if key not in self._read))
            totals = {series: d.copy() for series, d in self._retired.items()}
        _add(totals, live)
        legacy = legacy_names()
        prefix_plugins = [p for p in scheduler.plugins if isinstance(p, PrefixStats)]
        size = GaugeMetricFamily(
            "llm_d_epp_prefix_indexer_size",
            "Entries (endpoint, prefix block) in the prefix index.",
            labels=list(_PLUGIN_LABELS),
        )
        for plugin in prefix_plugins:
            typed = plugin.typed_name
            size.add_metric([typed.name, typed.type], plugin.index_entries())
        families: list[Metric] = [size]
        if legacy:
            old_size = GaugeMetricFamily(
                "inference_extension_prefix_indexer_size",
                "[Deprecated: use llm_d_epp_prefix_indexer_size] Entries in the prefix index.",
            )
            old_size.add_metric([], sum(p.index_entries() for p in prefix_plugins))
            families.append(old_size)
        for name, spec in _HISTOGRAMS.items():
            series = [(values, d) for (family, values), d in totals.items() if family == name]
            families.append(
                histogram_family(name, spec.documentation, spec.labelnames, series, spec.unit)
            )
            if not legacy:
                continue
            if spec.legacy_labels != spec.labelnames:
                # Summed over plugins; exported (as zeros) before any plugin counted.
                total = Distribution(spec.bounds)
                for _, distribution in series:
                    total.add(distribution)
                series = [((), total)]
            families.append(
                histogram_family(
                    spec.legacy,
                    f"[Deprecated: use {name}] {spec.documentation}",
                    spec.legacy_labels,
                    series,
                    spec.unit,
                )
            )
        return families


def _series(scheduler: SchedulerView) -> Iterable[tuple[_Series, Distribution]]:
    for timing in scheduler.timings:
        point, name = _EXTENSION_POINTS[timing.extension_point], timing.typed_name
        yield (_PLUGIN_DURATION, (point, name.type, name.name)), timing.durations_ns
    for plugin in scheduler.plugins:
        if isinstance(plugin, PrefixStats):
            labels = (plugin.typed_name.name, plugin.typed_name.type)
            yield (_HIT_RATIO, labels), plugin.hit_ratios
            yield (_HIT_BYTES, labels), plugin.hit_bytes


def _add(totals: dict[_Series, Distribution], more: Iterable[tuple[_Series, Distribution]]) -> None:
    """Add each distribution of ``more`` to the total of its series (copied, not shared)."""
    for series, distribution in more:
        total = totals.get(series)
        if total is None:
            totals[series] = distribution.copy()
        else:
            total.add(distribution)
