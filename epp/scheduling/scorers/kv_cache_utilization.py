"""``kv-cache-utilization-scorer``: prefer endpoints with more free KV cache."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.types import CycleState, LLMRequest, ScoreAdder, Scorer, TypedName

__all__ = ["TYPE", "KVCacheUtilizationScorer", "factory"]

TYPE = "kv-cache-utilization-scorer"


class KVCacheUtilizationScorer(NamedPlugin):
    """``1 - kv_cache_usage`` (the scraped fraction of KV blocks in use); an absolute
    scale, unlike the min-max load scorers. Out-of-range readings are clamped by the
    profile."""

    __slots__ = ()

    TYPE = TYPE

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        return [1.0 - ep.metrics.kv_cache_usage for ep in endpoints]

    def add_scores(
        self,
        cycle: CycleState,
        request: LLMRequest,
        endpoints: Sequence[Endpoint],
        weight: float,
        totals: list[float] | None,
    ) -> list[float]:
        # A reading may lie outside [0, 1]: clamped as the profile would (NaN to 0).
        scores = [1.0 - ep.metrics.kv_cache_usage for ep in endpoints]
        return [
            total + weight * (s if 0.0 <= s <= 1.0 else (1.0 if s > 1.0 else 0.0))
            for total, s in zip(totals or [0.0] * len(scores), scores, strict=True)
        ]


def factory(name: str, parameters: Mapping[str, Any]) -> KVCacheUtilizationScorer:
    Params(TypedName(TYPE, name), parameters).finish()
    return KVCacheUtilizationScorer(name)


_: type[Scorer] = KVCacheUtilizationScorer
_adder: type[ScoreAdder] = KVCacheUtilizationScorer
