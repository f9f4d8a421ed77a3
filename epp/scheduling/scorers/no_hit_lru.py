"""``no-hit-lru-scorer``: spread requests that hit no cache over the least recently cold pods.

A request whose prompt no candidate holds (a cold request) fills fresh KV blocks
wherever it goes; sending such requests to the endpoint that took a cold one longest
ago (or never) spreads cache growth evenly. The reference's scores: for a cold request,
over ``n`` candidates, endpoints that never took a cold request come first in candidate
order, then the others from least to most recently cold; the one at rank ``r`` scores
``max(0, 1 - r / (n - 1))``, where a used endpoint's rank is the number of never-used
candidates plus its place in the LRU (oldest 0). A warm request (some candidate holds
some of its prefix) scores 0.5 everywhere, leaving the choice to the prefix scorer.
Only cold picks move an endpoint to the front of the LRU (``lruSize`` entries, 1024).

Whether a request is cold comes from a ``prefix-cache-scorer`` of the same config:
``prefixPluginName`` names it; else the one whose producer is
``prefixMatchInfoProducerName``; else the one named ``prefix-cache-scorer``, or the only
one. With none, every request is cold (as in the reference).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.scorers.prefix_cache import TYPE as PREFIX_TYPE
from epp.scheduling.scorers.prefix_cache import PrefixCacheScorer
from epp.scheduling.types import (
    CycleState,
    EndpointRemovalHook,
    LLMRequest,
    PeerAware,
    Plugin,
    PostPick,
    Scorer,
    TypedName,
)

__all__ = ["DEFAULT_LRU_SIZE", "TYPE", "NoHitLruScorer", "factory"]

TYPE = "no-hit-lru-scorer"
DEFAULT_LRU_SIZE = 1024
WARM_SCORE = 0.5


class NoHitLruScorer(NamedPlugin):
    """See the module docstring. Keeps the LRU of cold picks; forgets removed endpoints."""

    __slots__ = ("_cold_key", "_lru", "_lru_size", "_prefix", "_prefix_name", "_producer_name")

    TYPE = TYPE

    def __init__(
        self,
        name: str | None = None,
        *,
        lru_size: int = DEFAULT_LRU_SIZE,
        prefix: PrefixCacheScorer | None = None,
        prefix_name: str = "",
        producer_name: str = "",
    ) -> None:
        super().__init__(name)
        if lru_size < 1:
            raise ValueError(f"lru_size must be >= 1, got {lru_size}")
        self._lru_size = lru_size
        self._lru: OrderedDict[Endpoint, None] = OrderedDict()  # oldest first
        self._prefix = prefix
        self._prefix_name = prefix_name
        self._producer_name = producer_name
        self._cold_key = f"{self._typed_name}/cold"

    @property
    def prefix_scorer(self) -> PrefixCacheScorer | None:
        return self._prefix

    def bind(self, peers: Mapping[str, Plugin]) -> None:
        where = f"plugin {self._typed_name.name!r} (type {TYPE!r})"
        if self._prefix_name:
            found = peers.get(self._prefix_name)
            if not isinstance(found, PrefixCacheScorer):
                raise SchedulerConfigError(
                    f"{where}: prefixPluginName {self._prefix_name!r} names no {PREFIX_TYPE}"
                )
            self._prefix = found
            return
        scorers = {n: p for n, p in peers.items() if isinstance(p, PrefixCacheScorer)}
        if self._producer_name:
            fed = [p for p in scorers.values() if p.producer_name == self._producer_name]
            if not fed:
                raise SchedulerConfigError(
                    f"{where}: no {PREFIX_TYPE} reads producer {self._producer_name!r}"
                )
            self._prefix = fed[0]
            return
        if PREFIX_TYPE in scorers:
            self._prefix = scorers[PREFIX_TYPE]
        elif len(scorers) == 1:
            self._prefix = next(iter(scorers.values()))

    def _is_cold(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> bool:
        if self._prefix is None:
            return True
        matched = self._prefix.matched(cycle, request)
        return not matched or not any(matched.get(ep, 0) > 0 for ep in endpoints)

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        cold = self._is_cold(cycle, request, endpoints)
        cycle[self._cold_key] = cold
        n = len(endpoints)
        if not cold:
            return [WARM_SCORE] * n
        if n == 1:
            return [1.0]
        positions = {ep: i for i, ep in enumerate(self._lru)}
        never_used = 0
        ranks: list[int] = []
        for ep in endpoints:
            if ep not in positions:
                ranks.append(never_used)
                never_used += 1
            else:
                ranks.append(-1)
        span = n - 1
        return [
            1.0 - rank / span if rank >= 0 else max(0.0, 1.0 - (never_used + positions[ep]) / span)
            for ep, rank in zip(endpoints, ranks, strict=True)
        ]

    def on_pick(self, cycle: CycleState, request: LLMRequest, chosen: Endpoint) -> None:
        if not cycle.get(self._cold_key, False):
            return
        lru = self._lru
        lru[chosen] = None
        lru.move_to_end(chosen)
        while len(lru) > self._lru_size:
            lru.popitem(last=False)

    def on_endpoints_removed(self, endpoints: Sequence[Endpoint]) -> None:
        for endpoint in endpoints:
            self._lru.pop(endpoint, None)


def factory(name: str, parameters: Mapping[str, Any]) -> NoHitLruScorer:
    params = Params(TypedName(TYPE, name), parameters)
    lru_size = params.get_int("lruSize", DEFAULT_LRU_SIZE, min_value=1)
    plugin_type = params.get_str("prefixPluginType", PREFIX_TYPE)
    if plugin_type != PREFIX_TYPE:
        params.fail("prefixPluginType", f"must be {PREFIX_TYPE!r}, got {plugin_type!r}")
    prefix_name = params.get_str("prefixPluginName")
    producer_name = params.get_str("prefixMatchInfoProducerName")
    params.finish()
    return NoHitLruScorer(
        name, lru_size=lru_size, prefix_name=prefix_name, producer_name=producer_name
    )


_: type[Scorer] = NoHitLruScorer
_post_pick: type[PostPick] = NoHitLruScorer
_removal: type[EndpointRemovalHook] = NoHitLruScorer
_peer: type[PeerAware] = NoHitLruScorer
