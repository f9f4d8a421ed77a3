"""Request-path metric families kept as plain data and exported under two names.

prometheus_client's ``Histogram.observe`` scans its buckets in Python and takes a lock per
bucket and sum (0.6-1.1 us with the reference's 35 latency buckets); epp records about ten
observations per request, so its request-path histograms are :class:`FastHistogramVec`,
whose children are distributions (about 0.15 us an observation), and its request-path
counters and gauges are :class:`FastCounterVec` and :class:`FastGaugeVec`, whose children
are one float. The page is rendered from a snapshot of the children (``dict.copy`` runs no
Python code, so a thread rendering it cannot see the dict change under it). Buckets are
cumulated when scraped.

Each vec is exported under its current name and, while :func:`~epp.observability.naming.
legacy_names` says so, under a :class:`Legacy` name too: a view of the same children with
fewer labels (summed over the others), maybe only some of them (``where``) and, for
histograms, maybe fewer buckets. A record is made once whatever is exported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from epp.distribution import Distribution
from epp.observability.naming import legacy_names

__all__ = [
    "FastCounterVec",
    "FastGaugeVec",
    "FastHistogramVec",
    "Legacy",
    "Value",
    "histogram_family",
]

_C = TypeVar("_C")


@dataclass(frozen=True, slots=True)
class Legacy:
    """The deprecated family a vec is also exported as.

    ``labelnames``: the vec's labels it keeps, in the vec's order; the series are summed
    over the others. ``where``: only the vec's series with these label values count.
    ``buckets``: for a histogram, the bounds it is exported with (a subset of the vec's).
    """

    name: str
    documentation: str
    labelnames: tuple[str, ...] = ()
    where: tuple[tuple[str, str], ...] = ()
    buckets: tuple[float, ...] | None = None


class _Projection:
    """How one view reads the vec's label values: which it keeps, which must match."""

    __slots__ = ("keep", "where")

    def __init__(
        self, labelnames: Sequence[str], keep: Sequence[str], where: Sequence[tuple[str, str]]
    ) -> None:
        try:
            self.keep = tuple(labelnames.index(name) for name in keep)
            self.where = tuple((labelnames.index(name), value) for name, value in where)
        except ValueError as exc:
            raise ValueError(f"a view's labels must be among {tuple(labelnames)}") from exc

    def key(self, values: tuple[str, ...]) -> tuple[str, ...] | None:
        for index, value in self.where:
            if values[index] != value:
                return None
        return tuple(values[i] for i in self.keep)


def _check_subset(name: str, bounds: Sequence[float], subset: Sequence[float]) -> None:
    if not set(subset) <= set(bounds) or list(subset) != sorted(set(subset)):
        raise ValueError(f"{name}: exported buckets must be increasing and among {bounds}")


def histogram_family(
    name: str,
    documentation: str,
    labelnames: Sequence[str],
    series: Iterable[tuple[Sequence[str], Distribution]],
    unit: float = 1.0,
    buckets: Sequence[float] | None = None,
) -> HistogramMetricFamily:
    """A histogram family of one series per (label values, distribution).

    ``unit``: what one of the family's units is in the distributions' (1e9 for
    nanoseconds exported as seconds); bounds and sums are divided by it. ``buckets``:
    export only these of the distributions' bounds (in the distributions' units).
    """
    family = HistogramMetricFamily(name, documentation, labels=list(labelnames))
    picked: list[tuple[int, str]] | None = None  # (last bucket index counted, "le")
    for values, distribution in series:
        if picked is None:
            bounds = distribution.bounds
            wanted = bounds if buckets is None else buckets
            picked = [(bounds.index(b), floatToGoString(b / unit)) for b in wanted]  # type: ignore[no-untyped-call]
        counts = distribution.counts
        cumulative: list[tuple[str, float]] = []
        total = 0
        start = 0
        for stop, le in picked:
            for i in range(start, stop + 1):
                total += counts[i]
            start = stop + 1
            cumulative.append((le, total))
        for i in range(start, len(counts)):
            total += counts[i]
        cumulative.append(("+Inf", total))
        family.add_metric(list(values), cumulative, distribution.sum / unit)
    return family


class _Vec(Collector):
    """Children by label values, exported under a name and maybe a legacy one."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        legacy: Legacy | None,
        registry: CollectorRegistry | None,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._legacy = legacy
        self._projection = (
            None
            if legacy is None
            else _Projection(self._labelnames, legacy.labelnames, legacy.where)
        )
        if registry is not None:
            registry.register(self)

    def declared_labels(self) -> dict[str, tuple[str, ...]]:
        """The label names of each family exported (families' names as collected: a
        counter's without ``_total``), known before any series exists."""
        names = {self._name.removesuffix("_total"): self._labelnames}
        if self._legacy is not None:
            names[self._legacy.name.removesuffix("_total")] = self._legacy.labelnames
        return names

    def _check(self, values: tuple[str, ...]) -> None:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name}: expected labels {self._labelnames}")

    def _grouped(self, children: dict[tuple[str, ...], _C]) -> dict[tuple[str, ...], list[_C]]:
        """The children of each legacy series."""
        assert self._projection is not None
        groups: dict[tuple[str, ...], list[_C]] = {}
        for values, child in children.items():
            key = self._projection.key(values)
            if key is not None:
                groups.setdefault(key, []).append(child)
        return groups


class FastHistogramVec(_Vec):
    """A histogram family with label names; ``labels(*values)`` gives the child.

    ``export_buckets``: the bounds the current name is exported with, when only some of
    ``buckets`` (the legacy name may want more of them).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = None,
        *,
        export_buckets: Sequence[float] | None = None,
        legacy: Legacy | None = None,
    ) -> None:
        self._bounds = tuple(float(b) for b in buckets)
        if list(self._bounds) != sorted(set(self._bounds)):
            raise ValueError(f"{name}: buckets must be increasing")
        self._export_buckets = None if export_buckets is None else tuple(export_buckets)
        for subset in (self._export_buckets, legacy.buckets if legacy else None):
            if subset is not None:
                _check_subset(name, self._bounds, subset)
        self._children: dict[tuple[str, ...], Distribution] = {}
        super().__init__(name, documentation, labelnames, legacy, registry)

    def labels(self, *values: str) -> Distribution:
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = Distribution(self._bounds)
        return child

    def collect(self) -> Iterable[Metric]:
        children = self._children.copy()
        families: list[Metric] = [
            histogram_family(
                self._name,
                self._documentation,
                self._labelnames,
                children.items(),
                buckets=self._export_buckets,
            )
        ]
        legacy = self._legacy
        if legacy is not None and legacy_names():
            merged: list[tuple[tuple[str, ...], Distribution]] = []
            for key, group in self._grouped(children).items():
                total = group[0].copy()
                for more in group[1:]:
                    total.add(more)
                merged.append((key, total))
            families.append(
                histogram_family(
                    legacy.name,
                    legacy.documentation,
                    legacy.labelnames,
                    merged,
                    buckets=legacy.buckets,
                )
            )
        return families


class Value:
    """One counter or gauge series: a float, changed without a lock (one event loop)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class _ValueVec(_Vec):
    _family: type[CounterMetricFamily] | type[GaugeMetricFamily]

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None = None,
        *,
        legacy: Legacy | None = None,
    ) -> None:
        self._children: dict[tuple[str, ...], Value] = {}
        super().__init__(name, documentation, labelnames, legacy, registry)

    def labels(self, *values: str) -> Value:
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = Value()
        return child

    def collect(self) -> Iterable[Metric]:
        children = self._children.copy()
        current = self._family(self._name, self._documentation, labels=self._labelnames)
        for values, child in children.items():
            current.add_metric(values, child.value)
        families: list[Metric] = [current]
        legacy = self._legacy
        if legacy is not None and legacy_names():
            old = self._family(legacy.name, legacy.documentation, labels=legacy.labelnames)
            for key, group in self._grouped(children).items():
                old.add_metric(key, sum(child.value for child in group))
            families.append(old)
        return families


class FastCounterVec(_ValueVec):
    """A counter family (exported as ``<name>_total``): ``labels(*values).inc()``."""

    _family = CounterMetricFamily


class FastGaugeVec(_ValueVec):
    """A gauge family: ``labels(*values).inc()`` and ``.dec()``."""

    _family = GaugeMetricFamily
