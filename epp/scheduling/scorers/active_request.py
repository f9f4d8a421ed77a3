"""``active-request-scorer``: prefer endpoints with fewer requests in flight, idle ones most.

The reference counts requests in flight per endpoint with its ``inflight-load-producer``;
epp's count is its own (``Endpoint.inflight_requests``: routed, stream not yet ended),
so the producer and this scorer's ``inFlightLoadProducerName`` need no counterpart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.types import CycleState, LLMRequest, Scorer, TypedName

__all__ = ["TYPE", "ActiveRequestScorer", "factory"]

TYPE = "active-request-scorer"


class ActiveRequestScorer(NamedPlugin):
    """An endpoint with at most ``idle_threshold`` requests in flight scores 1.0; a busier
    one ``(max - n) / max * max_busy_score``, where ``max`` is the busiest candidate's
    count, so the busiest scores 0 and ``max_busy_score`` < 1 opens a gap between idle
    and busy endpoints (the reference's formula)."""

    __slots__ = ("_idle_threshold", "_max_busy_score")

    TYPE = TYPE

    def __init__(
        self, name: str | None = None, *, idle_threshold: int = 0, max_busy_score: float = 1.0
    ) -> None:
        super().__init__(name)
        if idle_threshold < 0 or not 0.0 <= max_busy_score <= 1.0:
            raise ValueError("idle_threshold must be >= 0 and max_busy_score in [0, 1]")
        self._idle_threshold = idle_threshold
        self._max_busy_score = max_busy_score

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        counts = [ep.inflight_requests for ep in endpoints]
        busiest = max(counts, default=0)
        idle, gap = self._idle_threshold, self._max_busy_score
        return [1.0 if n <= idle else (busiest - n) / busiest * gap for n in counts]


def factory(name: str, parameters: Mapping[str, Any]) -> ActiveRequestScorer:
    params = Params(TypedName(TYPE, name), parameters)
    idle = params.get_int("idleThreshold", 0, min_value=0)
    gap = params.get_float("maxBusyScore", 1.0, min_value=0.0)
    if gap > 1.0:
        params.fail("maxBusyScore", f"must be at most 1.0, got {gap!r}")
    # Deprecated in the reference and ignored there too: the count lives as long as the
    # request's stream, not a timeout.
    params.get_str("requestTimeout")
    # epp counts in-flight requests itself; the reference names the producer it reads.
    params.get_str("inFlightLoadProducerName")
    params.finish()
    return ActiveRequestScorer(name, idle_threshold=idle, max_busy_score=gap)


_: type[Scorer] = ActiveRequestScorer
