"""A labelled Prometheus histogram for the request path, cheaper than prometheus_client's.

prometheus_client's ``Histogram.observe`` scans its buckets in Python and takes a lock per
bucket and sum (0.6-1.1 us with the reference's 35 latency buckets); epp records about ten
observations per request. Here an observation is a ``bisect`` and two additions (about
0.15 us). There are no locks: epp updates its metrics on one event loop, and the page is
rendered from a snapshot of the children (``dict.copy`` runs no Python code, so a thread
rendering it cannot see the dict change under it). Buckets are cumulated when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["FastHistogram", "FastHistogramVec"]


class FastHistogram:
    """One label set's buckets (not cumulative), count and sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, as Prometheus's "le" asks.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class FastHistogramVec(Collector):
    """A histogram family with label names; ``labels(*values)`` gives the child."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = tuple(float(b) for b in buckets)
        if list(self._bounds) != sorted(set(self._bounds)):
            raise ValueError(f"{name}: buckets must be increasing")
        self._children: dict[tuple[str, ...], FastHistogram] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> FastHistogram:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name}: expected labels {self._labelnames}")
            child = self._children[values] = FastHistogram(self._bounds)
        return child

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(
            self._name, self._documentation, labels=list(self._labelnames)
        )
        bounds = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        for values, child in self._children.copy().items():
            cumulative: list[tuple[str, float]] = []
            total = 0
            for bound, count in zip(bounds, child.counts, strict=True):
                total += count
                cumulative.append((bound, total))
            family.add_metric(list(values), cumulative, child.sum)
        return [family]
