"""``running-requests-size-scorer``: prefer endpoints running fewer requests (scraped)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.scorers.normalize import add_inverted_min_max, inverted_min_max
from epp.scheduling.types import CycleState, LLMRequest, ScoreAdder, Scorer, TypedName

__all__ = ["TYPE", "RunningRequestsSizeScorer", "factory"]

TYPE = "running-requests-size-scorer"


class RunningRequestsSizeScorer(NamedPlugin):
    """``(max - r) / (max - min)`` over the candidates' running requests ``r`` (vLLM's
    ``num_requests_running``); 1.0 for all when equal."""

    __slots__ = ()

    TYPE = TYPE

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        return inverted_min_max([ep.metrics.running_requests for ep in endpoints])

    def add_scores(
        self,
        cycle: CycleState,
        request: LLMRequest,
        endpoints: Sequence[Endpoint],
        weight: float,
        totals: list[float] | None,
    ) -> list[float]:
        return add_inverted_min_max(
            [ep.metrics.running_requests for ep in endpoints], weight, totals
        )


def factory(name: str, parameters: Mapping[str, Any]) -> RunningRequestsSizeScorer:
    Params(TypedName(TYPE, name), parameters).finish()
    return RunningRequestsSizeScorer(name)


_: type[Scorer] = RunningRequestsSizeScorer
_adder: type[ScoreAdder] = RunningRequestsSizeScorer
