"""``inflight-load-scorer``: prefer endpoints with fewer requests epp itself has in flight."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.scorers.normalize import (
    add_inverted_gap,
    add_inverted_min_max,
    inverted_gap,
    inverted_min_max,
)
from epp.scheduling.types import CycleState, LLMRequest, ScoreAdder, Scorer, TypedName

__all__ = ["TYPE", "InflightLoadScorer", "factory"]

TYPE = "inflight-load-scorer"


DEFAULT_GAP_SCALE = 0.0


class InflightLoadScorer(NamedPlugin):
    """Prefers endpoints with fewer requests epp has in flight there (``n``).

    With ``gap_scale`` 0 (the reference behaviour): ``(max - n) / (max - min)``, 1.0 for
    all when equal. With ``gap_scale`` k > 0: ``1 - min(n - min_n, k) / k``, an absolute
    score that lets a cache hit outweigh a small imbalance (see ``inverted_gap``).

    The count is kept by the request-control layer (routed, stream not yet ended), so it
    moves with every pick, where scraped queue depth lags by a scrape interval.
    """

    __slots__ = ("_gap_scale",)

    TYPE = TYPE

    def __init__(self, name: str | None = None, *, gap_scale: float = DEFAULT_GAP_SCALE) -> None:
        super().__init__(name)
        if gap_scale < 0:
            raise ValueError(f"gap_scale must be >= 0, got {gap_scale}")
        self._gap_scale = gap_scale

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        loads = [ep.inflight_requests for ep in endpoints]
        if self._gap_scale > 0:
            return inverted_gap(loads, self._gap_scale)
        return inverted_min_max(loads)

    def add_scores(
        self,
        cycle: CycleState,
        request: LLMRequest,
        endpoints: Sequence[Endpoint],
        weight: float,
        totals: list[float] | None,
    ) -> list[float]:
        loads = [ep.inflight_requests for ep in endpoints]
        if self._gap_scale > 0:
            return add_inverted_gap(loads, self._gap_scale, weight, totals)
        return add_inverted_min_max(loads, weight, totals)


def factory(name: str, parameters: Mapping[str, Any]) -> InflightLoadScorer:
    params = Params(TypedName(TYPE, name), parameters)
    gap_scale = params.get_float("gapScale", DEFAULT_GAP_SCALE, min_value=0.0)
    params.finish()
    return InflightLoadScorer(name, gap_scale=gap_scale)


_: type[Scorer] = InflightLoadScorer
_adder: type[ScoreAdder] = InflightLoadScorer
