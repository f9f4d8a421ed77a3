"""``weighted-random-picker``: endpoints drawn at random, each in proportion to its score.

The reference's method (A-Res weighted sampling without replacement): every endpoint
with a score ``w > 0`` gets the key ``u ** (1 / w)`` for a uniform ``u`` in (0, 1), and
the endpoints with the largest keys are returned, largest first; the first is so drawn
with probability ``w / sum(w)``. Endpoints scoring 0 or less come only after all the
others, and when none scores above 0 the draw is uniform (its ``random-picker``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.pickers.base import DEFAULT_FALLBACKS, FallbackPicker, build_picker
from epp.scheduling.types import CycleState, Picker, ScoredEndpoint

__all__ = ["DEFAULT_FALLBACKS", "TYPE", "WeightedRandomPicker", "factory"]

TYPE = "weighted-random-picker"

_TINY = 1e-10  # u is never 0, so every positive score gets a positive key


class WeightedRandomPicker(FallbackPicker):
    """Returns up to ``1 + fallbacks`` distinct endpoints, drawn as the module says."""

    __slots__ = ()

    TYPE = TYPE

    def pick(self, cycle: CycleState, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        limit = min(self._limit, len(scored))
        if not any(score > 0 for _, score in scored):
            return [ep for ep, _ in self._rng.sample(list(scored), limit)]
        rand = self._rng.random
        keyed = [
            ((rand() or _TINY) ** (1.0 / score) if score > 0 else 0.0, i)
            for i, (_, score) in enumerate(scored)
        ]
        keyed.sort(reverse=True)
        return [scored[i][0] for _, i in keyed[:limit]]


def factory(name: str, parameters: Mapping[str, Any]) -> WeightedRandomPicker:
    return build_picker(WeightedRandomPicker, TYPE, name, parameters)


_: type[Picker] = WeightedRandomPicker
