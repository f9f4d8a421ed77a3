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

epp's one addition: with a ``lora-affinity-scorer`` in the config, a request for a LoRA
adapter that a candidate has loaded (that scorer gives it 1.0) is warm too, so that a
short adapter request, whose prompt fills no block, stays with its adapter rather than
being spread like a cold prefill.

Whether a request is cold comes from a ``prefix-cache-scorer`` of the same config:
``prefixPluginName`` names it; else the one whose producer is
``prefixMatchInfoProducerName``; else the one named ``prefix-cache-scorer``, or the only
one. With none, every request is cold (as in the reference).
"""

from __future__ import annotations

import itertools
import operator
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.scorers.lora_affinity import LoraAffinityScorer
from epp.scheduling.scorers.prefix_cache import TYPE as PREFIX_TYPE
from epp.scheduling.scorers.prefix_cache import PrefixCacheScorer
from epp.scheduling.types import (
    CycleState,
    DeferredWork,
    EndpointRemovalHook,
    LLMRequest,
    PeerAware,
    Plugin,
    PostPick,
    ScoreAdder,
    TypedName,
)

__all__ = ["DEFAULT_LRU_SIZE", "TYPE", "NoHitLruScorer", "factory"]

TYPE = "no-hit-lru-scorer"
DEFAULT_LRU_SIZE = 1024
WARM_SCORE = 0.5
_FEW_HOLDERS = 16
_TABLES = 8  # weighted score tables kept (by candidate count and weight)
_MINUS_ONES = itertools.repeat(-1)


class NoHitLruScorer(NamedPlugin):
    """See the module docstring. Keeps the LRU of cold picks; forgets removed endpoints."""

    __slots__ = (
        "_cold_key",
        "_deferred",
        "_lora",
        "_lru",
        "_lru_size",
        "_positions",
        "_prefix",
        "_prefix_name",
        "_producer_name",
        "_tables",
    )

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
        # Each LRU entry's place (oldest 0); None once the LRU changed, until
        # flush_deferred (the scheduler deferring) or the next cold request rebuilds it.
        self._positions: dict[Endpoint, int] | None = None
        self._tables: dict[tuple[int, float], list[float]] = {}
        self._lora: LoraAffinityScorer | None = None
        self._prefix = prefix
        self._prefix_name = prefix_name
        self._producer_name = producer_name
        self._cold_key = f"{self._typed_name}/cold"
        self._deferred = False

    @property
    def prefix_scorer(self) -> PrefixCacheScorer | None:
        return self._prefix

    def bind(self, peers: Mapping[str, Plugin]) -> None:
        self._lora = next((p for p in peers.values() if isinstance(p, LoraAffinityScorer)), None)
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
        if self._lora is not None and self._lora.adapter_loaded(cycle, request, endpoints):
            return False  # a pod has its adapter loaded: where it goes is LoRA affinity's
        if self._prefix is None:
            return True
        matched = self._prefix.matched(cycle, request)
        if not matched:
            return True
        if len(matched) <= _FEW_HOLDERS:
            # Usually a few pods hold a prompt: look for them among the candidates (a
            # C-level scan each) rather than look up every candidate.
            return not any(blocks > 0 and ep in endpoints for ep, blocks in matched.items())
        return not any(matched.get(ep, 0) > 0 for ep in endpoints)

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        cold = self._is_cold(cycle, request, endpoints)
        cycle[self._cold_key] = cold
        if not cold:
            return [WARM_SCORE] * len(endpoints)
        return self._add_cold(endpoints, 1.0, None)

    def add_scores(
        self,
        cycle: CycleState,
        request: LLMRequest,
        endpoints: Sequence[Endpoint],
        weight: float,
        totals: list[float] | None,
    ) -> list[float]:
        cold = self._is_cold(cycle, request, endpoints)
        cycle[self._cold_key] = cold
        if cold:
            return self._add_cold(endpoints, weight, totals)
        # A warm request: the same share for every candidate (most requests, one pass).
        share = weight * WARM_SCORE
        if totals is None:
            return [share] * len(endpoints)
        return [t + share for t in totals]

    def _add_cold(
        self, endpoints: Sequence[Endpoint], weight: float, totals: list[float] | None
    ) -> list[float]:
        """``totals`` plus ``weight`` times each candidate's cold score (the scores
        themselves for weight 1 and no totals): one C-level pass for the candidates'
        places in the LRU, then one more for their scores, looked up in a cached table
        of the weighted score of each rank. The places are built once per LRU change,
        after the pick when the scheduler defers (off the next decision's path). Against
        the earlier form (never-used candidates looked up in a dict of their own, the
        places rebuilt by the next cold request), ``benchmarks/bench_scheduler.py
        --baseline`` with a new 32 KB prompt each time: 0.88x the decision's median at
        256 endpoints, 0.81x at 1,024 (5 rounds)."""
        n = len(endpoints)
        if n == 1:
            return [weight * 1.0] if totals is None else [totals[0] + weight * 1.0]
        table = self._weighted_scores(n - 1, weight)
        positions = self._positions
        if positions is None:
            positions = self._rebuild_positions()
        # Each candidate's place in the LRU (oldest 0; -1: never used). Never-used ones
        # rank first, in candidate order; the others after them, oldest first.
        at = list(map(positions.get, endpoints, _MINUS_ONES))
        never_used = at.count(-1)
        if not never_used:
            shares: Iterable[float] = map(table.__getitem__, at)
            if totals is None:
                return list(shares)
            return list(map(operator.add, totals, shares))
        by_place = table[never_used:]
        next_unused = iter(table).__next__
        if totals is None:
            return [by_place[p] if p >= 0 else next_unused() for p in at]
        return [
            t + (by_place[p] if p >= 0 else next_unused()) for t, p in zip(totals, at, strict=True)
        ]

    def _rebuild_positions(self) -> dict[Endpoint, int]:
        lru = self._lru
        positions = self._positions = dict(zip(lru, range(len(lru)), strict=True))
        return positions

    def set_deferred(self, deferred: bool) -> None:
        self._deferred = deferred

    def flush_deferred(self) -> None:
        if self._deferred and self._positions is None:
            self._rebuild_positions()

    def _weighted_scores(self, span: int, weight: float) -> list[float]:
        """``weight`` times the cold score of rank 0, 1, ... over ``span`` + 1
        candidates (``1 - rank / span``, 0 from rank ``span`` on), as long as any rank
        can be (candidates plus the LRU's entries) and one more."""
        key = (span, weight)
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) >= _TABLES:
                self._tables.clear()
            table = self._tables[key] = [weight * (1.0 - r / span) for r in range(span)] + [
                weight * 0.0
            ] * (self._lru_size + 1)
        return table

    def on_pick(self, cycle: CycleState, request: LLMRequest, chosen: Endpoint) -> None:
        if not cycle.get(self._cold_key, False):
            return
        lru = self._lru
        lru[chosen] = None
        lru.move_to_end(chosen)
        while len(lru) > self._lru_size:
            lru.popitem(last=False)
        self._positions = None

    def on_endpoints_removed(self, endpoints: Sequence[Endpoint]) -> None:
        for endpoint in endpoints:
            self._lru.pop(endpoint, None)
        self._positions = None


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


_: type[ScoreAdder] = NoHitLruScorer
_post_pick: type[PostPick] = NoHitLruScorer
_removal: type[EndpointRemovalHook] = NoHitLruScorer
_peer: type[PeerAware] = NoHitLruScorer
_deferred: type[DeferredWork] = NoHitLruScorer
