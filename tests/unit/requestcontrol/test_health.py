"""Passive health: back-off that grows on repeated failure and heals on success."""

from __future__ import annotations

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.requestcontrol.health import PassiveHealth, is_failure


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> PassiveHealth:
    return PassiveHealth(initial_backoff_s=1.0, max_backoff_s=5.0, clock=clock)


EP = Endpoint("10.0.0.1:8000")


def fail(health: PassiveHealth, status: int = 503) -> None:
    """A request routed now fails."""
    health.record(EP, health.generation(EP), status)


def backoff_after_failure(health: PassiveHealth, clock: Clock) -> float:
    """Fail a request routed now; how long the endpoint is then avoided."""
    fail(health)
    start = clock.now
    while health.in_backoff(EP):
        clock.now += 0.25
    return clock.now - start


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (200, False),
        (404, False),
        (429, False),
        (499, False),
        (500, True),
        (503, True),
        (504, True),
    ],
    ids=str,
)
def test_only_5xx_counts_as_failure(status: int, failure: bool) -> None:
    assert is_failure(status) is failure


def test_backoff_doubles_on_repeated_failure_up_to_the_max(
    health: PassiveHealth, clock: Clock
) -> None:
    assert not health.in_backoff(EP)
    assert [backoff_after_failure(health, clock) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_success_heals_and_the_next_failure_starts_over(
    health: PassiveHealth, clock: Clock
) -> None:
    backoff_after_failure(health, clock)
    backoff_after_failure(health, clock)
    health.record(EP, health.generation(EP), 200)
    assert backoff_after_failure(health, clock) == 1.0


def test_a_success_ends_a_backoff_early(health: PassiveHealth) -> None:
    fail(health)
    assert health.in_backoff(EP)
    health.record(EP, health.generation(EP), 200)  # routed there while it was avoided
    assert not health.in_backoff(EP)


def test_requests_routed_before_an_ejection_say_nothing_new(
    health: PassiveHealth, clock: Clock
) -> None:
    before = health.generation(EP)  # several requests in flight when the endpoint breaks
    health.record(EP, before, 503)
    ejected_until = clock.now + 1.0
    health.record(EP, before, 503)  # the rest of the burst does not extend the back-off
    health.record(EP, before, 200)  # nor does an old request that happened to finish well
    assert health.in_backoff(EP)
    clock.now = ejected_until
    assert not health.in_backoff(EP)
    health.record(EP, before, 503)  # still old news after the back-off
    assert not health.in_backoff(EP)
    assert backoff_after_failure(health, clock) == 2.0  # a new request's failure counts


def test_failures_while_ejected_are_ignored(health: PassiveHealth, clock: Clock) -> None:
    fail(health)
    fail(health)  # routed while ejected (nothing else left), and failed
    clock.now += 1.0
    assert not health.in_backoff(EP)
    assert backoff_after_failure(health, clock) == 2.0


def test_zero_initial_backoff_turns_it_off(clock: Clock) -> None:
    health = PassiveHealth(initial_backoff_s=0, max_backoff_s=0, clock=clock)
    fail(health)
    assert not health.in_backoff(EP)


def test_forget_drops_the_state(health: PassiveHealth) -> None:
    fail(health)
    health.forget([EP])
    assert not health.in_backoff(EP)
    assert health.generation(EP) == 0


def test_bad_backoffs_are_refused() -> None:
    with pytest.raises(ValueError):
        PassiveHealth(initial_backoff_s=2.0, max_backoff_s=1.0)
    with pytest.raises(ValueError):
        PassiveHealth(initial_backoff_s=-1.0)


def test_any_in_backoff_is_false_only_when_none_is(health: PassiveHealth, clock: Clock) -> None:
    assert not health.any_in_backoff()
    other = Endpoint("10.0.0.2:8000")
    fail(health)  # EP: 1 s
    clock.now += 0.5
    health.record(other, health.generation(other), 503)  # other: 1 s, to 101.5
    assert health.any_in_backoff()
    health.record(EP, health.generation(EP), 200)  # EP heals at once
    assert not health.in_backoff(EP) and health.in_backoff(other) and health.any_in_backoff()
    clock.now += 1.0
    assert not health.in_backoff(other) and not health.any_in_backoff()
