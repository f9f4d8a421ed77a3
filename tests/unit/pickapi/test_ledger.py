"""Unfinished picks: kept until taken, released oldest first after the timeout, and
never more than the cap (the oldest makes room)."""

from __future__ import annotations

import pytest

from epp.pickapi.ledger import OutstandingPicks, PendingPick
from epp.routing import RoutingDecision
from epp.scheduling.types import LLMRequest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pending(request_id: str) -> PendingPick:
    decision = RoutingDecision(LLMRequest(request_id, "m", ""), [], "", 0)
    return PendingPick(request_id, decision, received_at=0.0, request_bytes=0, decision_s=0.0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def released() -> list[tuple[str, str]]:
    return []


def ledger(clock: Clock, released: list[tuple[str, str]], **options: float) -> OutstandingPicks:
    return OutstandingPicks(
        timeout_s=options.get("timeout_s", 10.0),
        max_outstanding=int(options.get("max_outstanding", 100)),
        release=lambda pick, reason: released.append((pick.request_id, reason)),
        clock=clock,
    )


def test_a_pick_is_kept_until_taken_once(clock: Clock, released: list[tuple[str, str]]) -> None:
    picks = ledger(clock, released)
    picks.add(pending("a"))
    assert "a" in picks and len(picks) == 1
    taken = picks.take("a")
    assert taken is not None and taken.request_id == "a"
    assert picks.take("a") is None
    assert released == []


def test_unfinished_picks_are_released_oldest_first_after_the_timeout(
    clock: Clock, released: list[tuple[str, str]]
) -> None:
    picks = ledger(clock, released, timeout_s=10.0)
    picks.add(pending("a"))
    clock.now += 4
    picks.add(pending("b"))
    picks.add(pending("c"))
    picks.take("b")
    clock.now += 6  # a's deadline
    assert picks.expire() == 1
    assert released == [("a", "timeout")]
    clock.now += 3.9
    assert picks.expire() == 0
    clock.now += 0.1  # c's deadline
    assert picks.expire() == 1
    assert released == [("a", "timeout"), ("c", "timeout")]
    assert len(picks) == 0


def test_adding_releases_what_expired_meanwhile(
    clock: Clock, released: list[tuple[str, str]]
) -> None:
    picks = ledger(clock, released, timeout_s=1.0)
    picks.add(pending("old"))
    clock.now += 5
    picks.add(pending("new"))
    assert released == [("old", "timeout")]
    assert "new" in picks


def test_the_cap_releases_the_oldest(clock: Clock, released: list[tuple[str, str]]) -> None:
    picks = ledger(clock, released, max_outstanding=2)
    for request_id in ("a", "b", "c"):
        picks.add(pending(request_id))
    assert released == [("a", "evicted")]
    assert len(picks) == 2 and "b" in picks and "c" in picks


def test_an_outstanding_id_cannot_be_added_twice(
    clock: Clock, released: list[tuple[str, str]]
) -> None:
    picks = ledger(clock, released)
    picks.add(pending("a"))
    with pytest.raises(ValueError, match="already outstanding"):
        picks.add(pending("a"))


@pytest.mark.parametrize("options", [{"timeout_s": 0.0}, {"max_outstanding": 0}])
def test_nonsense_limits_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ledger(Clock(), [], **options)
