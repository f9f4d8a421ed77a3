"""Workloads for the routing benchmark: pure, deterministic lists of :class:`Request`.

Each module makes one kind; ``WORKLOADS`` names them for the runner. Every generator
takes the offered rate and the duration in *simulated* seconds and a seed, and returns the
requests sorted by arrival.

| name | module | what is shared |
| --- | --- | --- |
| ``shared-prefix`` | :mod:`.shared_prefix` | a 6000-token system prompt per group of users |
| ``zipf-prefix`` | :mod:`.zipf` | the same, with Zipf-skewed group popularity |
| ``multi-turn`` | :mod:`.multi_turn` | each conversation's earlier turns |
| ``no-sharing`` | :mod:`.no_sharing` | nothing (control) |
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.workloads import multi_turn, no_sharing, shared_prefix, zipf
from benchmarks.workloads.arrivals import poisson_arrivals, rate_sweep
from benchmarks.workloads.request import DEFAULT_MODEL, Request, chat_body

__all__ = [
    "DEFAULT_MODEL",
    "WORKLOADS",
    "Request",
    "WorkloadFn",
    "chat_body",
    "poisson_arrivals",
    "rate_sweep",
]

# (rate_per_s, duration_s, seed, model) -> requests
WorkloadFn = Callable[[float, float, int, str], list[Request]]


def _shared_prefix(rate: float, duration: float, seed: int, model: str) -> list[Request]:
    return shared_prefix.generate(
        shared_prefix.DEFAULT, rate_per_s=rate, duration_s=duration, seed=seed, model=model
    )


def _zipf(rate: float, duration: float, seed: int, model: str) -> list[Request]:
    return zipf.generate(rate_per_s=rate, duration_s=duration, seed=seed, model=model)


def _multi_turn(rate: float, duration: float, seed: int, model: str) -> list[Request]:
    return multi_turn.generate(rate_per_s=rate, duration_s=duration, seed=seed, model=model)


def _no_sharing(rate: float, duration: float, seed: int, model: str) -> list[Request]:
    return no_sharing.generate(rate_per_s=rate, duration_s=duration, seed=seed, model=model)


WORKLOADS: dict[str, WorkloadFn] = {
    "shared-prefix": _shared_prefix,
    "zipf-prefix": _zipf,
    "multi-turn": _multi_turn,
    "no-sharing": _no_sharing,
}
