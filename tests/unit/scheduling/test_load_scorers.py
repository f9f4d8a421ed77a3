"""queue-scorer, inflight-load-scorer and kv-cache-utilization-scorer formulas."""

from __future__ import annotations

import pytest

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.scheduling.scorers.inflight_load import InflightLoadScorer
from epp.scheduling.scorers.kv_cache_utilization import KVCacheUtilizationScorer
from epp.scheduling.scorers.queue import QueueScorer
from epp.scheduling.types import CycleState, LLMRequest

REQUEST = LLMRequest("r1", "m", "hello")

MIN_MAX_CASES = [
    pytest.param([0, 5, 10], [1.0, 0.5, 0.0], id="spread"),
    pytest.param([3, 3, 3], [1.0, 1.0, 1.0], id="all-equal"),
    pytest.param([7], [1.0], id="single-endpoint"),
    pytest.param([2, 2, 6], [1.0, 1.0, 0.0], id="tie-at-min"),
    pytest.param([0, 4, 4], [1.0, 0.0, 0.0], id="tie-at-max"),
    pytest.param([100, 101], [1.0, 0.0], id="scale-free"),
]


@pytest.mark.parametrize(("waiting", "expected"), MIN_MAX_CASES)
def test_queue_scorer(waiting: list[int], expected: list[float]) -> None:
    eps = [Endpoint(f"e{i}", metrics=Metrics(waiting_requests=q)) for i, q in enumerate(waiting)]
    assert QueueScorer().score(CycleState(), REQUEST, eps) == pytest.approx(expected)


@pytest.mark.parametrize(("inflight", "expected"), MIN_MAX_CASES)
def test_inflight_load_scorer(inflight: list[int], expected: list[float]) -> None:
    eps = [Endpoint(f"e{i}", inflight_requests=n) for i, n in enumerate(inflight)]
    assert InflightLoadScorer().score(CycleState(), REQUEST, eps) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("inflight", "gap_scale", "expected"),
    [
        pytest.param([0, 2, 8, 20], 8.0, [1.0, 0.75, 0.0, 0.0], id="capped-at-scale"),
        pytest.param([100, 101], 8.0, [1.0, 0.875], id="absolute-not-scale-free"),
        pytest.param([5, 5], 4.0, [1.0, 1.0], id="equal"),
    ],
)
def test_inflight_load_scorer_gap_mode(
    inflight: list[int], gap_scale: float, expected: list[float]
) -> None:
    eps = [Endpoint(f"e{i}", inflight_requests=n) for i, n in enumerate(inflight)]
    scorer = InflightLoadScorer(gap_scale=gap_scale)
    assert scorer.score(CycleState(), REQUEST, eps) == pytest.approx(expected)


def test_inflight_load_scorer_rejects_negative_gap() -> None:
    with pytest.raises(ValueError, match="gap_scale"):
        InflightLoadScorer(gap_scale=-1)


def test_inflight_scorer_ignores_scraped_queue() -> None:
    eps = [
        Endpoint("a", metrics=Metrics(waiting_requests=50), inflight_requests=0),
        Endpoint("b", metrics=Metrics(waiting_requests=0), inflight_requests=2),
    ]
    assert InflightLoadScorer().score(CycleState(), REQUEST, eps) == [1.0, 0.0]


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param([0.0, 0.25, 1.0], [1.0, 0.75, 0.0], id="range"),
        pytest.param([0.5, 0.5], [0.5, 0.5], id="tie"),
        pytest.param([0.9], [pytest.approx(0.1)], id="single-endpoint-absolute"),
        pytest.param([1.2], [pytest.approx(-0.2)], id="over-one-left-to-profile-clamp"),
    ],
)
def test_kv_cache_utilization_scorer(usage: list[float], expected: list[float]) -> None:
    eps = [Endpoint(f"e{i}", metrics=Metrics(kv_cache_usage=u)) for i, u in enumerate(usage)]
    assert KVCacheUtilizationScorer().score(CycleState(), REQUEST, eps) == expected
