"""``max-score-picker``: the highest total score first, ties broken at random."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.pickers.base import DEFAULT_FALLBACKS, FallbackPicker, build_picker
from epp.scheduling.types import CycleState, Picker, ScoredEndpoint

__all__ = ["DEFAULT_FALLBACKS", "TYPE", "MaxScorePicker", "factory"]

TYPE = "max-score-picker"

_score = itemgetter(1)


class MaxScorePicker(FallbackPicker):
    """Returns up to ``1 + fallbacks`` endpoints, best first.

    Endpoints with equal scores come in random order (from ``rng``), so a cold fleet,
    where every score ties, spreads its load instead of always picking the first.
    """

    __slots__ = ()

    TYPE = TYPE

    def pick(self, cycle: CycleState, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        n = len(scored)
        if n == 1:
            return [scored[0][0]]
        ranked = sorted(scored, key=_score, reverse=True)
        limit = min(self._limit, n)
        out: list[Endpoint] = []
        i = 0
        while len(out) < limit:
            top = ranked[i][1]
            j = i + 1
            while j < n and ranked[j][1] == top:
                j += 1
            if j - i == 1:
                out.append(ranked[i][0])
            else:
                # Draw tied endpoints one by one, uniformly without replacement, until the
                # list is full (random.sample is several times slower on a hot path).
                group = ranked[i:j]
                rand = self._rng.random
                for _ in range(min(limit - len(out), j - i)):
                    out.append(group.pop(int(rand() * len(group)))[0])
            i = j
        return out


def factory(name: str, parameters: Mapping[str, Any]) -> MaxScorePicker:
    return build_picker(MaxScorePicker, TYPE, name, parameters)


_: type[Picker] = MaxScorePicker
