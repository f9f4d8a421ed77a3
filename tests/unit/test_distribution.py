"""Distribution: bucket counts as Prometheus's ``le`` reads them; copies and sums."""

from __future__ import annotations

import pytest

from epp.distribution import Distribution


def test_a_value_counts_in_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    d = Distribution((1, 10))
    for value in (0, 1, 1.5, 10, 11):
        d.observe(value)
    assert d.counts == [2, 2, 1]  # (..1], (1..10], above every bound
    assert (d.count, d.sum) == (5, 23.5)


def test_copies_are_independent_and_add_up() -> None:
    d = Distribution((1, 10))
    d.observe(5)
    copy = d.copy()
    copy.observe(50)
    assert (d.counts, d.sum) == ([0, 1, 0], 5)
    d.add(copy)
    assert (d.counts, d.sum) == ([0, 2, 1], 60)


def test_bounds_must_increase_and_match_to_add() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Distribution((2, 1))
    with pytest.raises(ValueError, match="cannot add"):
        Distribution((1,)).add(Distribution((2,)))
