"""From a parsed request to a routing decision: candidates, scheduling, load accounting.

The director sits between the ext_proc layer (which knows Envoy) and the scheduler
(which knows scores). It owns the rules that are neither: which endpoints may serve a
model at all, which errors a client sees, and the count of requests epp has in flight
on each endpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from epp.api.openai import parse_request_body
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.store import EndpointStore
from epp.errors import BadRequest, ModelNotFound, ServiceUnavailable
from epp.observability import metrics
from epp.scheduling.types import LLMRequest, SchedulingResult

__all__ = ["Director", "RoutingDecision", "SchedulerLike"]

log = logging.getLogger(__name__)


class SchedulerLike(Protocol):
    def schedule(self, request: LLMRequest, candidates: Sequence[Endpoint]) -> SchedulingResult: ...


@dataclass(slots=True)
class RoutingDecision:
    """Where one request goes. ``finish()`` must be called exactly once when it ends."""

    request: LLMRequest
    endpoints: list[Endpoint]  # primary first, then fallbacks
    destination: str  # the x-gateway-destination-endpoint value
    candidates: int  # how many endpoints were eligible
    finished: bool = False

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def primary(self) -> Endpoint:
        return self.endpoints[0]


class Director:
    """Routes requests over the endpoints in ``store`` with ``scheduler``.

    ``unready_after_failures``: consecutive failed scrapes after which an endpoint stops
    being a candidate (in static mode the scrape is the only health signal there is).
    ``destination_fallbacks``: how many fallback endpoints to list after the primary in
    the destination value; 0 suits Envoy's ORIGINAL_DST cluster, which reads one address.
    """

    def __init__(
        self,
        store: EndpointStore,
        scheduler: SchedulerLike,
        *,
        unready_after_failures: int = 3,
        destination_fallbacks: int = 0,
    ) -> None:
        self._store = store
        self._scheduler = scheduler
        self._unready_after_failures = unready_after_failures
        self._destination_fallbacks = destination_fallbacks

    def is_ready(self, endpoint: Endpoint) -> bool:
        return (
            endpoint.metrics.updated_at > 0.0
            and endpoint.scrape_failures < self._unready_after_failures
        )

    def route_body(
        self,
        body: bytes,
        *,
        request_id: str,
        headers: dict[str, str],
        subset: Sequence[str] | None = None,
    ) -> RoutingDecision:
        """Route a request with a JSON body; raises an ``EppError`` the client should see."""
        parsed = parse_request_body(body)
        request = LLMRequest(
            request_id=request_id,
            model=parsed.model,
            prompt=parsed.prompt,
            stream=parsed.stream,
            headers=headers,
        )
        if not self._store.knows_model(parsed.model):
            raise ModelNotFound(f"model '{parsed.model}' is not served here")
        return self._schedule(request, self._store.serving(parsed.model), subset)

    def route_without_body(
        self,
        *,
        method: str,
        request_id: str,
        headers: dict[str, str],
        subset: Sequence[str] | None = None,
    ) -> RoutingDecision:
        """Route a request that has no body (GET /v1/models, /health): any ready endpoint."""
        if method == "POST":
            raise BadRequest("request body is empty; expected a JSON object with 'model'",
                             code="missing_body")
        request = LLMRequest(request_id=request_id, model="", prompt="", headers=headers)
        return self._schedule(request, self._store.all(), subset)

    def _schedule(
        self, request: LLMRequest, serving: Sequence[Endpoint], subset: Sequence[str] | None
    ) -> RoutingDecision:
        if subset is not None:
            allowed = set(subset)
            serving = [ep for ep in serving if ep.address in allowed]
        candidates = [ep for ep in serving if self.is_ready(ep)]
        if not candidates:
            what = f"model '{request.model}'" if request.model else "this request"
            if subset is not None:
                raise ServiceUnavailable(f"no ready endpoint for {what} in the subset hint")
            raise ServiceUnavailable(f"no ready endpoint for {what}")
        started = time.perf_counter()
        result = self._scheduler.schedule(request, candidates)
        metrics.SCHEDULER_DURATION.observe(time.perf_counter() - started)
        chosen = result.endpoints[: 1 + self._destination_fallbacks]
        chosen[0].inflight_requests += 1
        return RoutingDecision(
            request=request,
            endpoints=chosen,
            destination=",".join(ep.address for ep in chosen),
            candidates=len(candidates),
        )

    @staticmethod
    def finish(decision: RoutingDecision) -> None:
        """The request's stream ended (completed, failed or reset): release its load."""
        if decision.finished:
            return
        decision.finished = True
        decision.primary.inflight_requests -= 1
