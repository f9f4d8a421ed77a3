"""``max-score-picker``: the highest total score first, ties broken at random."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from heapq import nlargest
from itertools import compress, repeat
from operator import itemgetter, le
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.pickers.base import DEFAULT_FALLBACKS, FallbackPicker, build_picker
from epp.scheduling.types import CycleState, Picker, ScoredEndpoint, ScoresPicker

__all__ = ["DEFAULT_FALLBACKS", "TYPE", "MaxScorePicker", "factory"]

TYPE = "max-score-picker"

_score = itemgetter(1)

# Below this many candidates one C sort of all pairs beats finding the cut-off first.
_SORT_ALL_BELOW = 32


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
        # Stable: equal scores keep the candidates' order, which the draws start from.
        return self._draw(sorted(scored, key=_score, reverse=True), min(self._limit, n))

    def pick_scores(
        self, cycle: CycleState, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        n = len(scores)
        if n < _SORT_ALL_BELOW:
            return self.pick(cycle, list(zip(endpoints, scores, strict=True)))
        limit = min(self._limit, n)
        # Only endpoints scoring at least the limit-th best score can be returned: every
        # group above it is taken whole, and the group at it is drawn from whole. Those
        # endpoints, sorted by score (stable, so each group keeps candidate order), are
        # the start of pick()'s stable ranking, so the draws consume the same random
        # numbers and return the same list. Over 256 candidates this is half the time of
        # one scan per distinct score above the cut-off (the map/compress is one C pass).
        cut = max(scores) if limit == 1 else nlargest(limit, scores)[-1]
        kept = list(compress(range(n), map(le, repeat(cut), scores)))
        kept.sort(key=scores.__getitem__, reverse=True)
        ranked: list[ScoredEndpoint] = [(endpoints[i], scores[i]) for i in kept]
        return self._draw(ranked, limit)

    def _draw(self, ranked: list[ScoredEndpoint], limit: int) -> list[Endpoint]:
        """The first ``limit`` of ``ranked`` (best first), each group of equal scores in
        random order."""
        n = len(ranked)
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
_scores_picker: type[ScoresPicker] = MaxScorePicker
