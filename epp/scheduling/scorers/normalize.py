"""Shared score arithmetic for the load scorers."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["inverted_gap", "inverted_min_max"]


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
