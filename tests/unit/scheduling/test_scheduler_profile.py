"""SchedulerProfile and Scheduler: filter order, clamping, weighting, picking, post-pick."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.errors import ServiceUnavailable
from epp.scheduling.errors import NoCandidates, SchedulerConfigError
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import CycleState, LLMRequest, ScoredEndpoint, TypedName

REQUEST = LLMRequest("r1", "m", "hello")


class FixedScorer:
    def __init__(self, name: str, scores: Sequence[float]) -> None:
        self.typed_name = TypedName("fixed", name)
        self.scores = list(scores)
        self.calls = 0

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        self.calls += 1
        return self.scores[: len(endpoints)]


class KeepFilter:
    """Keeps the endpoints whose address is in ``keep``; logs its calls in ``log``."""

    def __init__(self, name: str, keep: set[str], log: list[str]) -> None:
        self.typed_name = TypedName("keep", name)
        self.keep = keep
        self.log = log

    def filter(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[Endpoint]:
        self.log.append(self.typed_name.name)
        return [ep for ep in endpoints if ep.address in self.keep]


class RecordingPicker:
    """Best first, no tie-breaking; remembers what it was handed."""

    def __init__(self) -> None:
        self.typed_name = TypedName("recording-picker", "p")
        self.seen: list[ScoredEndpoint] = []

    def pick(self, cycle: CycleState, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        self.seen = list(scored)
        return [ep for ep, _ in sorted(scored, key=lambda item: -item[1])]


class PickLog:
    def __init__(self) -> None:
        self.typed_name = TypedName("pick-log", "log")
        self.chosen: list[Endpoint] = []
        self.removed: list[Endpoint] = []

    def on_pick(self, cycle: CycleState, request: LLMRequest, chosen: Endpoint) -> None:
        self.chosen.append(chosen)

    def on_endpoints_removed(self, endpoints: Sequence[Endpoint]) -> None:
        self.removed.extend(endpoints)


EPS = [Endpoint("a"), Endpoint("b"), Endpoint("c"), Endpoint("d")]


@pytest.mark.parametrize(
    ("scorers", "expected_totals"),
    [
        pytest.param([([0.5, 0.25, 1.0, 0.0], 1.0)], [0.5, 0.25, 1.0, 0.0], id="single"),
        pytest.param(
            [([1.0, 0.0, 0.5, 0.5], 2.0), ([0.0, 1.0, 0.5, 1.0], 3.0)],
            [2.0, 3.0, 2.5, 4.0],
            id="weighted-sum",
        ),
        pytest.param([([5.0, -1.0, math.nan, math.inf], 2.0)], [2.0, 0.0, 0.0, 2.0], id="clamped"),
        pytest.param(
            [([1.0, 1.0, 1.0, 1.0], 0.0), ([0.5, 0.5, 0.5, 0.5], 1.0)],
            [0.5, 0.5, 0.5, 0.5],
            id="zero-weight-ignored",
        ),
        pytest.param([], [0.0, 0.0, 0.0, 0.0], id="no-scorers"),
    ],
)
def test_scores_are_clamped_and_weighted(
    scorers: list[tuple[list[float], float]], expected_totals: list[float]
) -> None:
    picker = RecordingPicker()
    weighted = [WeightedScorer(FixedScorer(f"s{i}", s), w) for i, (s, w) in enumerate(scorers)]
    SchedulerProfile("p", [], weighted, picker).run(REQUEST, EPS)
    assert [ep for ep, _ in picker.seen] == EPS
    assert [total for _, total in picker.seen] == pytest.approx(expected_totals)


def test_zero_weight_scorer_is_not_called() -> None:
    scorer = FixedScorer("s", [1.0] * 4)
    SchedulerProfile("p", [], [WeightedScorer(scorer, 0.0)], RecordingPicker()).run(REQUEST, EPS)
    assert scorer.calls == 0


def test_filters_run_in_order_and_scorers_see_the_survivors() -> None:
    log: list[str] = []
    filters = [KeepFilter("f1", {"a", "b", "c"}, log), KeepFilter("f2", {"b", "c"}, log)]
    picker = RecordingPicker()
    result = SchedulerProfile(
        "p", filters, [WeightedScorer(FixedScorer("s", [0.1, 0.9]), 1.0)], picker
    ).run(REQUEST, EPS)
    assert log == ["f1", "f2"]
    assert [ep.address for ep, _ in picker.seen] == ["b", "c"]
    assert result.primary.address == "c"
    assert [ep.address for ep in result.endpoints] == ["c", "b"]


def test_filter_leaving_nothing_stops_early_with_503() -> None:
    log: list[str] = []
    filters = [KeepFilter("f1", set(), log), KeepFilter("f2", {"a"}, log)]
    profile = SchedulerProfile("p", filters, [], RecordingPicker())
    with pytest.raises(NoCandidates, match="keep/f1") as caught:
        profile.run(REQUEST, EPS)
    assert log == ["f1"]
    assert isinstance(caught.value, ServiceUnavailable)
    assert caught.value.status == 503


def test_post_pick_hears_the_primary_once() -> None:
    log = PickLog()
    profile = SchedulerProfile(
        "p",
        [],
        [WeightedScorer(FixedScorer("s", [0.1, 0.9, 0.5, 0.2]), 1.0)],
        RecordingPicker(),
        post_picks=[log],
    )
    result = profile.run(REQUEST, EPS)
    assert len(result.endpoints) == 4
    assert log.chosen == [EPS[1]]


def test_post_picks_default_to_plugins_that_implement_it() -> None:
    class ScoringLog(PickLog):
        def score(
            self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
        ) -> list[float]:
            return [1.0] * len(endpoints)

    log = ScoringLog()
    profile = SchedulerProfile("p", [], [WeightedScorer(log, 1.0)], RecordingPicker())
    profile.run(REQUEST, EPS[:1])
    assert log.chosen == [EPS[0]]
    profile.on_endpoints_removed([EPS[0]])
    assert log.removed == [EPS[0]]


def test_timings_count_every_plugin_call() -> None:
    log: list[str] = []
    profile = SchedulerProfile(
        "p",
        [KeepFilter("f", {"a", "b"}, log)],
        [WeightedScorer(FixedScorer("s", [0.1, 0.2]), 1.0)],
        RecordingPicker(),
        post_picks=[PickLog()],
    )
    for _ in range(3):
        profile.run(REQUEST, EPS)
    points = {(t.extension_point, t.typed_name.type): t for t in profile.timings}
    assert set(points) == {
        ("filter", "keep"),
        ("scorer", "fixed"),
        ("picker", "recording-picker"),
        ("post_pick", "pick-log"),
    }
    assert all(t.durations_ns.count == 3 and t.durations_ns.sum > 0 for t in profile.timings)


def test_scorer_returning_wrong_count_is_a_bug() -> None:
    profile = SchedulerProfile(
        "p", [], [WeightedScorer(FixedScorer("s", [1.0]), 1.0)], RecordingPicker()
    )
    with pytest.raises(RuntimeError, match="1 scores for 4 endpoints"):
        profile.run(REQUEST, EPS)


def test_picker_must_be_a_picker() -> None:
    with pytest.raises(SchedulerConfigError, match="not a picker"):
        SchedulerProfile("p", [], [], FixedScorer("s", []))  # type: ignore[arg-type]


def test_scheduler_rejects_empty_candidates_with_503() -> None:
    scheduler = Scheduler(SchedulerProfile("p", [], [], RecordingPicker()))
    with pytest.raises(NoCandidates) as caught:
        scheduler.schedule(REQUEST, [])
    assert caught.value.status == 503


def test_scheduler_forwards_removals() -> None:
    log = PickLog()
    scheduler = Scheduler(SchedulerProfile("p", [], [], RecordingPicker(), post_picks=[log]))
    scheduler.on_endpoints_removed([EPS[2]])
    scheduler.on_endpoints_removed([])
    assert log.removed == [EPS[2]]
    assert scheduler.schedule(REQUEST, EPS).primary in EPS
