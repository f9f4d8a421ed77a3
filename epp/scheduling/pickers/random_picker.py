"""``random-picker``: endpoints in uniform random order, ignoring scores (a baseline)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.pickers.base import DEFAULT_FALLBACKS, FallbackPicker, build_picker
from epp.scheduling.types import CycleState, Picker, ScoredEndpoint

__all__ = ["DEFAULT_FALLBACKS", "TYPE", "RandomPicker", "factory"]

TYPE = "random-picker"


class RandomPicker(FallbackPicker):
    """Returns up to ``1 + fallbacks`` distinct endpoints drawn uniformly at random."""

    __slots__ = ()

    TYPE = TYPE

    def pick(self, cycle: CycleState, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        chosen = self._rng.sample(scored, min(self._limit, len(scored)))
        return [ep for ep, _ in chosen]


def factory(name: str, parameters: Mapping[str, Any]) -> RandomPicker:
    return build_picker(RandomPicker, TYPE, name, parameters)


_: type[Picker] = RandomPicker
