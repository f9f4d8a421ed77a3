"""Popularity skew across groups: the shared-prefix workload with Zipf-distributed groups.

Group ``k`` (0-based) is picked with probability proportional to ``1 / (k + 1) ** s``.
With the default s = 1.1 and 32 groups the top group gets 28 % of the requests, more than
twice a pod's fair share in an 8-pod fleet: a router that follows cache affinity alone
piles it onto one pod (hot-spotting).
"""

from __future__ import annotations

from benchmarks.workloads import shared_prefix
from benchmarks.workloads.request import DEFAULT_MODEL, Request
from benchmarks.workloads.shared_prefix import SharedPrefixSpec

__all__ = ["DEFAULT_EXPONENT", "generate", "zipf_weights"]

DEFAULT_EXPONENT = 1.1


def zipf_weights(n: int, exponent: float = DEFAULT_EXPONENT) -> list[float]:
    """Normalised weights ``1 / k**exponent`` for ranks k = 1..n (they sum to 1)."""
    if n < 1 or exponent < 0:
        raise ValueError(f"need n >= 1 and exponent >= 0, got {n}, {exponent}")
    raw = [1.0 / (k**exponent) for k in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def generate(
    spec: SharedPrefixSpec = shared_prefix.DEFAULT,
    *,
    rate_per_s: float,
    duration_s: float,
    seed: int = 0,
    model: str = DEFAULT_MODEL,
    exponent: float = DEFAULT_EXPONENT,
) -> list[Request]:
    """:func:`shared_prefix.generate` with Zipf(``exponent``) group popularity."""
    return shared_prefix.generate(
        spec,
        rate_per_s=rate_per_s,
        duration_s=duration_s,
        seed=seed,
        model=model,
        group_weights=zipf_weights(spec.groups, exponent),
    )
