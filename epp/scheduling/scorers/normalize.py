"""Shared score arithmetic for the load scorers."""

from __future__ import annotations

from collections.abc import Sequence
from operator import add

__all__ = ["add_inverted_gap", "add_inverted_min_max", "inverted_gap", "inverted_min_max"]


def inverted_min_max(values: Sequence[int | float]) -> list[float]:
    """``(max - v) / (max - min)`` for each value: 1.0 for the least loaded, 0.0 for the
    most; 1.0 for all when they are equal (a single endpoint included).

    Scale-free: one request more than the others costs the full score, exactly as much
    as a hundred more would.

    >>> inverted_min_max([0, 5, 10])
    [1.0, 0.5, 0.0]
    """
    lo = min(values)
    hi = max(values)
    if hi == lo:
        return [1.0] * len(values)
    span = hi - lo
    return [(hi - v) / span for v in values]


def inverted_gap(values: Sequence[int | float], scale: float) -> list[float]:
    """``1 - min(v - min, scale) / scale``: how far each value is above the least, in
    units of ``scale``, capped at 0.

    Unlike min-max, the score is absolute: one request more than the least loaded costs
    ``1/scale`` of the score, so a small imbalance cannot outweigh a cache hit, while a
    gap of ``scale`` or more costs it all.

    >>> inverted_gap([0, 2, 8, 20], 8)
    [1.0, 0.75, 0.0, 0.0]
    """
    lo = min(values)
    return [1.0 - min(v - lo, scale) / scale for v in values]


# The add_* forms below serve ScoreAdder: the weighted score folded into the profile's
# totals in the one pass that reads the endpoints anyway. Counts take few distinct values
# (a few dozen across a thousand endpoints), so each distinct value's weighted score is
# computed once, with the very expression of the plain form, and looked up per endpoint:
# the totals are bit for bit those of the profile's own sum, so ties stay ties. The
# scores lie in [0, 1] by construction for ints, so the profile's clamp would change
# nothing and is left out.


def add_inverted_min_max(
    values: Sequence[int], weight: float, totals: list[float] | None
) -> list[float]:
    """``totals[i] + weight * inverted_min_max(values)[i]`` (``totals`` None: from 0).

    >>> add_inverted_min_max([0, 5, 10], 2.0, [1.0, 1.0, 1.0])
    [3.0, 2.0, 1.0]
    """
    distinct = set(values)  # bounds from a few dozen values, not from every candidate
    lo = min(distinct)
    hi = max(distinct)
    if hi == lo:  # every score is 1.0, and weight * 1.0 is weight
        if totals is None:
            return [weight] * len(values)
        return [total + weight for total in totals]
    span = hi - lo
    weighted = {v: weight * ((hi - v) / span) for v in distinct}
    return _add_looked_up(weighted, values, totals)


def add_inverted_gap(
    values: Sequence[int], scale: float, weight: float, totals: list[float] | None
) -> list[float]:
    """``totals[i] + weight * inverted_gap(values, scale)[i]`` (``totals`` None: from 0).

    >>> add_inverted_gap([0, 2, 8, 20], 8, 1.0, None)
    [1.0, 0.75, 0.0, 0.0]
    """
    distinct = set(values)
    lo = min(distinct)
    weighted = {v: weight * (1.0 - min(v - lo, scale) / scale) for v in distinct}
    return _add_looked_up(weighted, values, totals)


def _add_looked_up(
    weighted: dict[int, float], values: Sequence[int], totals: list[float] | None
) -> list[float]:
    looked_up = map(weighted.__getitem__, values)
    if totals is None:
        return list(looked_up)
    return list(map(add, totals, looked_up))
