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
        # numbers and return the same list. Every pass over the candidates is in C (the
        # map/compress, a count per group): over 256 candidates that all tie, 0.3x the
        # time of building and walking the ranked pairs in Python; with distinct scores
        # about the same.
        if limit == 1:
            best = cut = max(scores)
        else:
            largest = nlargest(limit, scores)
            best, cut = largest[0], largest[-1]
        selected = compress(range(n), map(le, repeat(cut), scores))
        if best == cut:
            # The best score is tied at least limit times (a cold or idle fleet): one
            # group, in candidate order, to draw from; nothing to sort.
            tied = list(map(endpoints.__getitem__, selected))
            if len(tied) == 1:
                return tied
            out: list[Endpoint] = []
            self._draw_from(tied, limit, out)
            return out
        kept = list(selected)
        kept.sort(key=scores.__getitem__, reverse=True)
        kept_scores = list(map(scores.__getitem__, kept))
        # Each group of equal scores is a run of kept (sorted), its length one C count.
        out = []
        i = 0
        while len(out) < limit:
            j = i + kept_scores.count(kept_scores[i])
            if j - i == 1:
                out.append(endpoints[kept[i]])
            else:
                group = list(map(endpoints.__getitem__, kept[i:j]))
                self._draw_from(group, min(limit - len(out), j - i), out)
            i = j
        return out

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
                group = [endpoint for endpoint, _ in ranked[i:j]]
                self._draw_from(group, min(limit - len(out), j - i), out)
            i = j
        return out

    def _draw_from(self, group: list[Endpoint], count: int, out: list[Endpoint]) -> None:
        """Moves ``count`` endpoints of ``group`` (tied) to ``out``, one by one, uniformly
        without replacement (random.sample is several times slower on a hot path)."""
        rand = self._rng.random
        for _ in range(count):
            out.append(group.pop(int(rand() * len(group))))


def factory(name: str, parameters: Mapping[str, Any]) -> MaxScorePicker:
    return build_picker(MaxScorePicker, TYPE, name, parameters)


_: type[Picker] = MaxScorePicker
_scores_picker: type[ScoresPicker] = MaxScorePicker
