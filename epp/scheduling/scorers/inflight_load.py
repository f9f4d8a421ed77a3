"""``inflight-load-scorer``: prefer endpoints with fewer requests epp itself has in flight."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.scorers.normalize import inverted_min_max
from epp.scheduling.types import CycleState, LLMRequest, Scorer, TypedName

__all__ = ["TYPE", "InflightLoadScorer", "factory"]

TYPE = "inflight-load-scorer"


class InflightLoadScorer(NamedPlugin):
    """``(max - n) / (max - min)`` over ``Endpoint.inflight_requests`` ``n``; 1.0 for all
    when equal.

    The count is kept by the request-control layer (routed, stream not yet ended), so it
    moves with every pick, where scraped queue depth lags by a scrape interval.
    """

    __slots__ = ()

    TYPE = TYPE

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        return inverted_min_max([ep.inflight_requests for ep in endpoints])


def factory(name: str, parameters: Mapping[str, Any]) -> InflightLoadScorer:
    Params(TypedName(TYPE, name), parameters).finish()
    return InflightLoadScorer(name)


_: type[Scorer] = InflightLoadScorer
