"""``kv-cache-utilization-scorer``: prefer endpoints with more free KV cache."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.types import CycleState, LLMRequest, Scorer, TypedName

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


def factory(name: str, parameters: Mapping[str, Any]) -> KVCacheUtilizationScorer:
    Params(TypedName(TYPE, name), parameters).finish()
    return KVCacheUtilizationScorer(name)


_: type[Scorer] = KVCacheUtilizationScorer
