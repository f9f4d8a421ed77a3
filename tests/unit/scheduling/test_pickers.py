"""max-score-picker and random-picker."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.pickers import max_score, random_picker
from epp.scheduling.pickers.max_score import MaxScorePicker
from epp.scheduling.pickers.random_picker import RandomPicker
from epp.scheduling.types import CycleState

EPS = [Endpoint(f"e{i}") for i in range(5)]


def scored(scores: list[float]) -> list[tuple[Endpoint, float]]:
    return list(zip(EPS, scores, strict=False))


def names(endpoints: list[Endpoint]) -> list[str]:
    return [ep.address for ep in endpoints]


@pytest.mark.parametrize(
    ("scores", "fallbacks", "expected"),
    [
        pytest.param([0.1, 0.9, 0.5], 2, ["e1", "e2", "e0"], id="best-first"),
        pytest.param([0.1, 0.9, 0.5, 0.7, 0.3], 2, ["e1", "e3", "e2"], id="cut-to-three"),
        pytest.param([0.1, 0.9, 0.5], 0, ["e1"], id="no-fallbacks"),
        pytest.param([0.4, 0.2], 5, ["e0", "e1"], id="fewer-than-asked"),
        pytest.param([0.3], 2, ["e0"], id="single-endpoint"),
    ],
)
def test_max_score_order(scores: list[float], fallbacks: int, expected: list[str]) -> None:
    picker = MaxScorePicker(fallbacks=fallbacks, rng=random.Random(0))
    assert names(picker.pick(CycleState(), scored(scores))) == expected


def test_max_score_ties_are_broken_at_random_within_their_rank() -> None:
    picker = MaxScorePicker(fallbacks=2, rng=random.Random(42))
    firsts: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    for _ in range(600):
        picked = names(picker.pick(CycleState(), scored([0.2, 0.8, 0.8, 0.8, 0.9])))
        assert picked[0] == "e4"  # the unique best always leads
        assert set(picked[1:]) <= {"e1", "e2", "e3"}  # never the worse e0
        assert len(set(picked)) == 3
        firsts[picked[1]] += 1
        seconds[picked[2]] += 1
    for counts in (firsts, seconds):
        assert set(counts) == {"e1", "e2", "e3"}
        assert min(counts.values()) > 120  # ~200 each if uniform


def test_max_score_all_tied_spreads_primaries() -> None:
    picker = MaxScorePicker(fallbacks=0, rng=random.Random(1))
    primaries = Counter(names(picker.pick(CycleState(), scored([1.0] * 5)))[0] for _ in range(500))
    assert set(primaries) == {f"e{i}" for i in range(5)}


def test_same_seed_same_choices() -> None:
    runs = []
    for _ in range(2):
        picker = max_score.factory("p", {"seed": 7})
        runs.append([names(picker.pick(CycleState(), scored([0.5] * 5))) for _ in range(20)])
    assert runs[0] == runs[1]


def test_max_score_factory_defaults() -> None:
    picker = max_score.factory("p", {})
    assert len(picker.pick(CycleState(), scored([0.1, 0.2, 0.3, 0.4, 0.5]))) == 3


@pytest.mark.parametrize("fallbacks", [0, 2, 10])
def test_random_picker_distinct_and_bounded(fallbacks: int) -> None:
    picker = RandomPicker(fallbacks=fallbacks, rng=random.Random(3))
    picked = picker.pick(CycleState(), scored([0.0, 1.0, 0.5, 0.5, 0.9]))
    assert len(picked) == min(1 + fallbacks, 5)
    assert len(set(picked)) == len(picked)


def test_random_picker_ignores_scores() -> None:
    picker = random_picker.factory("r", {"seed": 5, "fallbacks": 0})
    primaries = Counter(
        names(picker.pick(CycleState(), scored([1.0, 0, 0, 0, 0])))[0] for _ in range(500)
    )
    assert set(primaries) == {f"e{i}" for i in range(5)}


def test_negative_fallbacks_rejected() -> None:
    with pytest.raises(ValueError, match="fallbacks"):
        MaxScorePicker(fallbacks=-1)


@pytest.mark.parametrize("fallbacks", [0, 1, 2, 5])
def test_pick_scores_returns_what_pick_returns_over_many_candidates(fallbacks: int) -> None:
    # pick_scores finds the ranking's head without sorting every candidate (from 32 on);
    # with the same seed it must draw the same random numbers and return the same list
    # as pick(), whatever the ties. 500 random score lists per fallback count, from all
    # distinct to a handful of values, would show a single difference.
    rng = random.Random(fallbacks)
    pool = [Endpoint(f"10.0.{i // 250}.{i % 250}:8000") for i in range(300)]
    for case in range(500):
        n = rng.randrange(32, 300)
        distinct = rng.choice([1, 2, 3, 5, 20, 10**9])
        scores = [float(rng.randrange(distinct)) / 7 for _ in range(n)]
        fast = MaxScorePicker("p", fallbacks=fallbacks, rng=random.Random(case))
        plain = MaxScorePicker("p", fallbacks=fallbacks, rng=random.Random(case))
        got = fast.pick_scores(CycleState(), pool[:n], scores)
        want = plain.pick(CycleState(), list(zip(pool[:n], scores, strict=True)))
        assert got == want, f"case {case}"
        assert len(got) == min(n, 1 + fallbacks)
