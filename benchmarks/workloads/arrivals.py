"""Open-loop arrival processes and the offered-rate sweep."""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["poisson_arrivals", "rate_sweep"]


def poisson_arrivals(rate_per_s: float, duration_s: float, rng: random.Random) -> list[float]:
    """Arrival times of a Poisson process of ``rate_per_s`` over ``[0, duration_s)``.

    Exponential gaps with mean ``1 / rate_per_s``; the count is Poisson with mean
    ``rate_per_s * duration_s``. Sorted, in seconds from 0.
    """
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be positive, got {rate_per_s}, {duration_s}")
    times: list[float] = []
    t = rng.expovariate(rate_per_s)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate_per_s)
    return times


def rate_sweep(knee_per_s: float, multiples: Sequence[float]) -> list[float]:
    """Offered rates as multiples of the fleet's estimated knee, rounded to 3 digits."""
    if knee_per_s <= 0:
        raise ValueError(f"knee must be positive, got {knee_per_s}")
    return [float(f"{knee_per_s * m:.3g}") for m in sorted(multiples)]
