"""The request-path histogram renders as prometheus_client's would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from epp.observability.histograms import FastHistogramVec


def test_same_exposition_as_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buckets = (0.005, 0.1, 1, 8, 3600)
    fast = FastHistogramVec("x_seconds", "Help.", ["a"], buckets, registry=ours)
    slow = Histogram("x_seconds", "Help.", ["a"], buckets=buckets, registry=theirs)
    for value in (0.0, 0.005, 0.0051, 0.5, 1, 7.9, 8, 9, 4000):
        fast.labels("q").observe(value)
        slow.labels("q").observe(value)

    def lines(registry: CollectorRegistry) -> list[str]:
        return [
            line
            for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line
        ]

    assert lines(ours) == lines(theirs)


def test_buckets_must_increase_and_labels_match() -> None:
    with pytest.raises(ValueError, match="increasing"):
        FastHistogramVec("y", "h", [], (1, 1))
    with pytest.raises(ValueError, match="labels"):
        FastHistogramVec("z", "h", ["a", "b"], (1,)).labels("only-one")
