"""Shared score arithmetic for the load scorers."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["inverted_min_max"]


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
