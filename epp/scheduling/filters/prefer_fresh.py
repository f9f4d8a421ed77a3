"""``prefer-fresh-filter``: drop endpoints with stale metrics, unless all are stale.

Its ``stalenessSeconds`` parameter defaults to ``DEFAULT_STALENESS_S``; built from epp's
configuration, to ``--metrics-staleness-threshold`` (:mod:`epp.config.profiles`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import DEFAULT_STALENESS_S, Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.types import CycleState, Filter, LLMRequest, TypedName

__all__ = ["STALENESS_PARAMETER", "TYPE", "PreferFreshFilter", "factory"]

TYPE = "prefer-fresh-filter"
STALENESS_PARAMETER = "stalenessSeconds"


class PreferFreshFilter(NamedPlugin):
    """Keeps the endpoints whose metrics are at most ``staleness_s`` old.

    When none is fresh (a cold start, a scrape outage) it keeps them all, so requests
    still route, on whatever the scorers make of old or absent metrics.
    """

    __slots__ = ("_clock", "_staleness_s")

    TYPE = TYPE

    def __init__(
        self,
        name: str | None = None,
        *,
        staleness_s: float = DEFAULT_STALENESS_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name)
        self._staleness_s = staleness_s
        self._clock = clock

    def filter(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        now = self._clock()
        staleness_s = self._staleness_s
        # Usually every endpoint is fresh, and the oldest reading tells: no reading is 0.0
        # (never scraped) when the least is above it, and ``now - u`` only shrinks as ``u``
        # grows, in floating point too. One attribute pass and a C ``min`` instead of a
        # method call per endpoint. (Readings are clock values, never NaN.)
        oldest = min([ep.metrics.updated_at for ep in endpoints], default=0.0)
        if oldest > 0.0 and now - oldest <= staleness_s:
            return endpoints
        fresh = [ep for ep in endpoints if ep.is_fresh(staleness_s, now)]
        return fresh if fresh else endpoints


def factory(name: str, parameters: Mapping[str, Any]) -> PreferFreshFilter:
    params = Params(TypedName(TYPE, name), parameters)
    staleness_s = params.get_float(STALENESS_PARAMETER, DEFAULT_STALENESS_S, positive=True)
    params.finish()
    return PreferFreshFilter(name, staleness_s=staleness_s)


_: type[Filter] = PreferFreshFilter
