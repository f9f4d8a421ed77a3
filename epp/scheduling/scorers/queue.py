"""``queue-scorer``: prefer endpoints with fewer waiting requests (scraped)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.scorers.normalize import add_inverted_min_max, inverted_min_max
from epp.scheduling.types import CycleState, LLMRequest, ScoreAdder, Scorer, TypedName

__all__ = ["TYPE", "QueueScorer", "factory"]

TYPE = "queue-scorer"


class QueueScorer(NamedPlugin):
    """``(max - q) / (max - min)`` over the candidates' waiting requests ``q``; 1.0 for all
    when equal. Reads the last scrape, so it lags a burst by up to a scrape interval."""

    __slots__ = ()

    TYPE = TYPE

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        return inverted_min_max([ep.metrics.waiting_requests for ep in endpoints])

    def add_scores(
        self,
        cycle: CycleState,
        request: LLMRequest,
        endpoints: Sequence[Endpoint],
        weight: float,
        totals: list[float] | None,
    ) -> list[float]:
        return add_inverted_min_max(
            [ep.metrics.waiting_requests for ep in endpoints], weight, totals
        )


def factory(name: str, parameters: Mapping[str, Any]) -> QueueScorer:
    Params(TypedName(TYPE, name), parameters).finish()
    return QueueScorer(name)


_: type[Scorer] = QueueScorer
_adder: type[ScoreAdder] = QueueScorer
