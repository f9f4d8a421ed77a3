"""A minimal cumulative histogram, and the bucket bounds vLLM uses for its histograms."""

from __future__ import annotations

from bisect import bisect_left

__all__ = [
    "E2E_LATENCY_BUCKETS_S",
    "INTER_TOKEN_LATENCY_BUCKETS_S",
    "TOKEN_COUNT_BUCKETS",
    "TTFT_BUCKETS_S",
    "Histogram",
]

TTFT_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
INTER_TOKEN_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
# Also used for queue time, as vLLM does.
E2E_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
# vLLM's 1-2-5 series up to a typical max_model_len.
TOKEN_COUNT_BUCKETS: tuple[float, ...] = (
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
    5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
)  # fmt: skip


class Histogram:
    """Observations counted into fixed upper bounds (``le``), plus their sum and count."""

    __slots__ = ("_counts", "bounds", "count", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be strictly increasing")
        self.bounds = bounds
        # One slot per bound plus the +Inf overflow; not cumulative until read.
        self._counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count ``value`` into the first bucket whose bound is >= it."""
        self._counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def observe_many(self, value: float, n: int) -> None:
        """Count ``n`` observations of the same ``value`` at the cost of one."""
        self._counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def cumulative(self) -> list[int]:
        """Cumulative counts per bound, the last entry being +Inf (== ``count``)."""
        out: list[int] = []
        running = 0
        for c in self._counts:
            running += c
            out.append(running)
        return out
