"""``random-picker``: endpoints in uniform random order, ignoring scores (a baseline)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.types import CycleState, Picker, ScoredEndpoint, TypedName

__all__ = ["DEFAULT_FALLBACKS", "TYPE", "RandomPicker", "factory"]

TYPE = "random-picker"
DEFAULT_FALLBACKS = 2


class RandomPicker(NamedPlugin):
    """Returns up to ``1 + fallbacks`` distinct endpoints drawn uniformly at random."""

    __slots__ = ("_limit", "_rng")

    TYPE = TYPE

    def __init__(
        self,
        name: str | None = None,
        *,
        fallbacks: int = DEFAULT_FALLBACKS,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(name)
        if fallbacks < 0:
            raise ValueError(f"fallbacks must be >= 0, got {fallbacks}")
        self._limit = 1 + fallbacks
        self._rng = rng if rng is not None else random.Random()

    def pick(self, cycle: CycleState, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        chosen = self._rng.sample(scored, min(self._limit, len(scored)))
        return [ep for ep, _ in chosen]


def factory(name: str, parameters: Mapping[str, Any]) -> RandomPicker:
    params = Params(TypedName(TYPE, name), parameters)
    fallbacks = params.get_int("fallbacks", DEFAULT_FALLBACKS, min_value=0)
    seed = params.get_optional_int("seed")
    params.finish()
    return RandomPicker(
        name, fallbacks=fallbacks, rng=random.Random(seed) if seed is not None else None
    )


_: type[Picker] = RandomPicker
