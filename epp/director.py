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
from dataclasses import dataclass, field
from typing import Protocol

from epp.api.openai import parse_request_body
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.store import EndpointStore
from epp.errors import BadRequest, ModelNotFound, ServiceUnavailable, TooManyRequests
from epp.observability import metrics
from epp.requestcontrol.admission import SaturationDetector
from epp.requestcontrol.objectives import Objectives
from epp.requestcontrol.rewrite import ModelRewrites
from epp.scheduling.types import LLMRequest, SchedulingResult

__all__ = ["Director", "ResponseOutcome", "RoutingDecision", "SchedulerLike"]

log = logging.getLogger(__name__)


class SchedulerLike(Protocol):
    def schedule(self, request: LLMRequest, candidates: Sequence[Endpoint]) -> SchedulingResult: ...

    def on_endpoints_removed(self, endpoints: Sequence[Endpoint]) -> None: ...


@dataclass(slots=True)
class ResponseOutcome:
    """What the response side of the stream showed; read when the request finishes."""

    status: int | None = None  # the upstream's HTTP status; None if no response headers came
    completed: bool = False  # the response reached its end (not reset, client still there)


@dataclass(slots=True)
class RoutingDecision:
    """Where one request goes. ``finish()`` must be called exactly once when it ends."""

    request: LLMRequest  # its model is the one sent upstream, after any rewrite
    endpoints: list[Endpoint]  # primary first, then fallbacks; empty: no endpoint picked
    destination: str  # the x-gateway-destination-endpoint value; "" when none picked
    candidates: int  # how many endpoints were eligible
    requested_model: str = ""  # the client's model; differs from request.model if rewritten
    priority: int = 0
    response: ResponseOutcome = field(default_factory=ResponseOutcome)
    finished: bool = False

    @property
    def model(self) -> str:
        """The model the client asked for (routes match on it; responses report it)."""
        return self.requested_model or self.request.model

    @property
    def target_model(self) -> str:
        return self.request.model

    @property
    def rewritten(self) -> bool:
        return bool(self.requested_model) and self.requested_model != self.request.model


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
        rewrites: ModelRewrites | None = None,
        objectives: Objectives | None = None,
        saturation: SaturationDetector | None = None,
        pick_endpoints: bool = True,
    ) -> None:
        self._store = store
        self._scheduler = scheduler
        self._unready_after_failures = unready_after_failures
        self._destination_fallbacks = destination_fallbacks
        self.rewrites = rewrites or ModelRewrites()
        self.objectives = objectives or Objectives()
        self._saturation = saturation or SaturationDetector()
        # False in body-based-routing mode: epp names the model for route matching and a
        # per-pool picker further on chooses the endpoint.
        self._pick_endpoints = pick_endpoints

    @property
    def scheduler(self) -> SchedulerLike:
        return self._scheduler

    def set_scheduler(self, scheduler: SchedulerLike) -> None:
        """Swap the scheduling profile (a pool's routing-strategy changed)."""
        self._scheduler = scheduler

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
        target = self.rewrites.target(parsed.model, headers)
        request = LLMRequest(
            request_id=request_id,
            model=target,
            prompt=parsed.prompt,
            stream=parsed.stream,
            headers=headers,
        )
        priority = self.objectives.priority(headers) if headers else 0
        if not self._pick_endpoints:
            return RoutingDecision(request, [], "", 0, requested_model=parsed.model,
                                   priority=priority)
        # No endpoints at all is a pool that is empty for now (503), not an unknown model.
        if self._store.all() and not self._store.knows_model(target):
            raise ModelNotFound(f"model '{target}' is not served here")
        serving = self._store.serving(target)
        if priority < 0 and self._saturation.saturated(
            [ep for ep in serving if self.is_ready(ep)]
        ):
            raise TooManyRequests(
                f"the pool serving '{target}' is saturated and this request is sheddable "
                f"(objective priority {priority}); retry later",
                code="pool_saturated",
            )
        decision = self._schedule(request, serving, subset)
        decision.requested_model = parsed.model
        decision.priority = priority
        return decision

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
        if not self._pick_endpoints:
            return RoutingDecision(request, [], "", 0)
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

    def finish(self, decision: RoutingDecision) -> None:
        """The request's stream ended (completed, failed or reset): release its load.

        ``decision.response`` says how the response went, as far as the stream showed it.
        """
        if decision.finished:
            return
        decision.finished = True
        if decision.endpoints:
            decision.endpoints[0].inflight_requests -= 1
