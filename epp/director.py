"""From a parsed request to a routing decision: candidates, scheduling, load accounting.

The director sits between the ext_proc layer (which knows Envoy) and the scheduler
(which knows scores). It owns the rules that are neither: which endpoints may serve a
model at all, which errors a client sees, and when a request starts and stops counting
as in flight on its endpoint (the endpoint keeps the count).

Candidates for a model, in order of preference: its ready, healthy endpoints (healthy:
fresh metrics and no passive-health back-off); else those of its first fallback model
that has some (the request is rewritten to that model); else its ready endpoints
regardless of health, since a back-off is a guess and serving beats refusing. Then
sheddable requests are refused while those candidates are saturated, and endpoints at
the in-flight cap are left out.

``GET /v1/models`` and ``/v1/models/{id}`` are answered here, for the pool: each pod
lists only its own models, and vLLM has no ``/v1/models/{id}`` at all. The pool's
models are those its ready endpoints serve (``catalog``); when none of them says what
it serves, one of them answers, as any bodiless request is routed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple, Protocol

from epp.api.models import model_body, models_list_body, models_query
from epp.api.openai import parse_request_body
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.store import EndpointStore
from epp.errors import BadRequest, ModelNotFound, ServiceUnavailable, TooManyRequests
from epp.observability import metrics
from epp.requestcontrol import catalog, conformance
from epp.requestcontrol.admission import SaturationDetector
from epp.requestcontrol.fallback import ModelFallbacks
from epp.requestcontrol.health import PassiveHealth
from epp.requestcontrol.model_selection import ModelSelector, Selection
from epp.requestcontrol.objectives import Objectives
from epp.requestcontrol.rewrite import ModelRewrites
from epp.routing import LocalAnswer, RoutingDecision
from epp.scheduling.errors import NoCandidates
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import LLMRequest

__all__ = ["FAIRNESS_HEADERS", "SELECTED_MODEL_HEADER", "Director", "LoadSharing"]

log = logging.getLogger(__name__)

# The reference EPP's current name, then the legacy one (the first present wins). epp
# has no flow control: the id only labels the request's metrics.
FAIRNESS_HEADERS = ("x-llm-d-inference-fairness-id", "x-gateway-inference-fairness-id")
_MAX_FAIRNESS_ID_CHARS = 128  # longer ids are cut: they become no label anyway
# The response header that names the model epp chose for a "model": "auto" request:
# vLLM Semantic Router's name for it.
SELECTED_MODEL_HEADER = "x-selected-model"


class LoadSharing(Protocol):
    """Who shares this replica's decisions with the others (epp/sync): told when a
    request starts or stops counting on an endpoint, and when the scheduler changes."""

    def load_changed(self, endpoint: Endpoint) -> None:
        """``endpoint.local_inflight`` changed; cheap, never raises (the request path)."""
        ...

    def scheduler_changed(self, scheduler: Scheduler) -> None: ...


class Director:
    """Routes requests over the endpoints in ``store`` with ``scheduler``: the
    :class:`~epp.routing.Router` of the ext_proc streams.

    ``unready_after_failures``: consecutive failed scrapes after which an endpoint stops
    being a candidate (in static mode the scrape is the only health signal there is).
    ``destination_fallbacks``: how many fallback endpoints to list after the primary in
    the destination value; 0 suits Envoy's ORIGINAL_DST cluster, which reads one address.
    ``max_inflight``: requests epp may have in flight on one endpoint (0: no cap); when
    every candidate is at it the request gets 429 ``no_capacity``. ``retry_after_s``:
    the retry-after of every 429. ``selector``: chooses the model of requests that name
    its selector (``"model": "auto"``); the body goes upstream with the chosen model.
    """

    def __init__(
        self,
        store: EndpointStore,
        scheduler: Scheduler,
        *,
        unready_after_failures: int = 3,
        destination_fallbacks: int = 0,
        rewrites: ModelRewrites | None = None,
        objectives: Objectives | None = None,
        saturation: SaturationDetector | None = None,
        pick_endpoints: bool = True,
        fallbacks: ModelFallbacks | None = None,
        health: PassiveHealth | None = None,
        max_inflight: int = 0,
        retry_after_s: int = 1,
        namespace: str = "",
        conformance_hooks: bool = False,
        selector: ModelSelector | None = None,
    ) -> None:
        self._store = store
        self._scheduler = scheduler
        self._unready_after_failures = unready_after_failures
        self._destination_fallbacks = destination_fallbacks
        self.rewrites = rewrites or ModelRewrites()
        self.objectives = objectives or Objectives()
        self._saturation = saturation or SaturationDetector()
        self.fallbacks = fallbacks or ModelFallbacks()
        self.health = health or PassiveHealth()
        self._max_inflight = max_inflight
        self._retry_after_s = retry_after_s
        self.namespace = namespace  # the pool's, for metric labels ("" for static endpoints)
        # Honour test-epp-endpoint-selection and echo the served endpoint (conformance.py).
        self._conformance_hooks = conformance_hooks
        # Chooses the model of requests naming the selector ("auto"); None: no selection.
        self._selector = selector
        # False in body-based-routing mode: epp names the model for route matching and a
        # per-pool picker further on chooses the endpoint.
        self._pick_endpoints = pick_endpoints
        self._sharing: LoadSharing | None = None
        # The prefix index's inserts wait for the loop's next turn, after the routing
        # answer went out (decisions are unchanged: see prefix_cache's module docstring).
        self._defers = scheduler.defer_post_pick_work()
        self._flush_due = False

    @property
    def scheduler(self) -> Scheduler:
        return self._scheduler

    def set_scheduler(self, scheduler: Scheduler) -> None:
        """Swap the scheduling profile (a pool's routing-strategy changed)."""
        self._scheduler.flush_deferred()
        self._scheduler = scheduler
        self._defers = scheduler.defer_post_pick_work()
        if self._sharing is not None:
            self._sharing.scheduler_changed(scheduler)

    def share_load(self, sharing: LoadSharing | None) -> None:
        """Tell ``sharing`` of every change of in-flight load, and of the scheduler."""
        self._sharing = sharing
        if sharing is not None:
            sharing.scheduler_changed(self._scheduler)

    def is_ready(self, endpoint: Endpoint) -> bool:
        return (
            endpoint.metrics.updated_at > 0.0
            and endpoint.scrape_failures < self._unready_after_failures
        )

    def is_healthy(self, endpoint: Endpoint, now: float | None = None) -> bool:
        """Ready, with fresh metrics, and not in a passive-health back-off."""
        if now is None:
            now = time.monotonic()
        return (
            self.is_ready(endpoint)
            and endpoint.is_fresh(self._saturation.staleness_s, now)
            and not self.health.in_backoff(endpoint)
        )

    def _healthy(self, endpoints: Sequence[Endpoint], now: float) -> list[Endpoint]:
        """The endpoints :meth:`is_healthy` keeps. Usually that is all of them, which two
        C-level passes tell (the oldest reading fresh, the most failures below the bar)
        when no back-off is running: a method call per endpoint cost ~130 µs a request
        at 256 endpoints, as much as scheduling them."""
        if endpoints and not self.health.any_in_backoff():
            oldest = min([ep.metrics.updated_at for ep in endpoints])
            if (
                oldest > 0.0
                and now - oldest <= self._saturation.staleness_s
                and max([ep.scrape_failures for ep in endpoints]) < self._unready_after_failures
            ):
                return list(endpoints)
        return [ep for ep in endpoints if self.is_healthy(ep, now)]

    def route_body(
        self,
        body: bytes | bytearray,
        *,
        request_id: str,
        headers: dict[str, str],
        subset: Sequence[str] | None = None,
        model: str | None = None,
        explain: bool = False,
    ) -> RoutingDecision:
        """Route a request with a JSON body; raises an ``EppError`` the client should see.

        ``model``: named apart from the body, which then need not name it (or exist).
        ``explain``: keep the candidates' scores in ``decision.scores``.
        """
        parsed = parse_request_body(
            body, max_prompt_chars=self._scheduler.prompt_chars, model=model
        )
        requested = parsed.model
        selection = None
        if self._selector is not None and self._selector.handles(requested):
            # From here on the chosen model is the one the client asked for: routes match
            # it, responses report it, rewrites and fallbacks apply to it.
            selection = self._selector.select(parsed.document, headers)
            metrics.model_selected(selection.rule, selection.model)
            requested = selection.model
        target, rule = self.rewrites.decide(requested, headers)
        if rule is not None:
            metrics.rewrite_decided(rule.name, requested, target)
        request = LLMRequest(
            request_id=request_id,
            model=target,
            prompt=parsed.prompt,
            stream=parsed.stream,
            headers=headers,
            explain=explain,
        )
        priority = self.objectives.priority(headers, parsed.model)
        fairness_id = _fairness_id(headers)
        if not self._pick_endpoints:
            decision = RoutingDecision(
                request,
                [],
                "",
                0,
                requested_model=requested,
                priority=priority,
                fairness_id=fairness_id,
                usage_asked=parsed.usage_asked,
            )
            _note_selection(decision, parsed.model, selection)
            return decision
        model, candidates = self._model_and_candidates(
            target, requested, self._narrowing(subset, headers)
        )
        if model != target:
            request = replace(request, model=model)
            metrics.MODEL_FALLBACKS.labels(*metrics.model_labels(target, model)).inc()
        if priority < 0 and self._saturation.saturated(candidates):
            raise TooManyRequests(
                f"the pool serving '{model}' is saturated and this request is sheddable "
                f"(priority {priority}); retry later",
                code="pool_saturated",
                retry_after_s=self._retry_after_s,
            )
        decision = self._schedule(request, candidates)
        decision.requested_model = requested
        _note_selection(decision, parsed.model, selection)
        decision.priority = priority
        decision.fairness_id = fairness_id
        decision.usage_asked = parsed.usage_asked
        if model != target:
            decision.fallback_from = target
        return decision

    def _model_and_candidates(
        self, target: str, requested: str, narrowing: _Narrowing
    ) -> tuple[str, list[Endpoint]]:
        """The model to send the request to and its candidates (see the module docstring).

        Raises ``ModelNotFound`` for a model no endpoint serves (where models are known)
        and ``ServiceUnavailable`` when no endpoint of it is ready.
        """
        now = time.monotonic()
        serving = _allowed(self._store.serving(target), narrowing)
        healthy = self._healthy(serving, now)
        if healthy:
            return target, healthy
        for fallback in self.fallbacks.of(target, requested):
            candidates = self._healthy(_allowed(self._store.serving(fallback), narrowing), now)
            if candidates:
                return fallback, candidates
        ready = [ep for ep in serving if self.is_ready(ep)]
        if ready:
            return target, ready
        # No endpoints at all is a pool that is empty for now (503), not an unknown model.
        if self._store.all() and not self._store.knows_model(target):
            raise ModelNotFound(f"model '{target}' is not served here")
        raise _no_ready_endpoint(f"model '{target}'", narrowing)

    def local_answer(
        self, *, method: str, headers: dict[str, str], subset: Sequence[str] | None = None
    ) -> LocalAnswer | None:
        """The pool's answer to a GET of the models API (see the module docstring), or
        ``None`` for a request to route. Raises ``ModelNotFound`` for a model no endpoint
        serves and ``ServiceUnavailable`` for one no ready endpoint serves."""
        if method != "GET" or not self._pick_endpoints:
            return None
        query = models_query(headers.get(":path", ""))
        if query is None:
            return None
        narrowing = self._narrowing(subset, headers)
        if narrowing.selection is not None:
            return None  # the conformance suite names the pod that must answer
        endpoints = _allowed(self._store.all(), narrowing)
        models = catalog.pool_models(ep for ep in endpoints if self.is_ready(ep))
        if models is None:
            return None
        created = int(time.time())
        model = query.model
        if model is None:
            return LocalAnswer(200, models_list_body(catalog.listed(models), created=created))
        if model in models:
            return LocalAnswer(200, model_body(model, created=created))
        if any(model in (ep.served_models() or ()) for ep in endpoints):
            raise _no_ready_endpoint(f"model '{model}'", narrowing)
        raise ModelNotFound(f"The model '{model}' does not exist")

    def route_without_body(
        self,
        *,
        method: str,
        request_id: str,
        headers: dict[str, str],
        subset: Sequence[str] | None = None,
    ) -> RoutingDecision:
        """Route a request that has no body (GET /health, a model list :meth:`local_answer`
        left to the pods): any ready endpoint."""
        if method == "POST":
            raise BadRequest(
                "request body is empty; expected a JSON object with 'model'", code="missing_body"
            )
        request = LLMRequest(request_id=request_id, model="", prompt="", headers=headers)
        if not self._pick_endpoints:
            return RoutingDecision(request, [], "", 0)
        now = time.monotonic()
        narrowing = self._narrowing(subset, headers)
        serving = _allowed(self._store.all(), narrowing)
        candidates = [ep for ep in serving if self.is_healthy(ep, now)] or [
            ep for ep in serving if self.is_ready(ep)
        ]
        if not candidates:
            raise _no_ready_endpoint("this request", narrowing)
        return self._schedule(request, candidates)

    def _schedule(self, request: LLMRequest, candidates: Sequence[Endpoint]) -> RoutingDecision:
        if self._max_inflight:
            candidates = [ep for ep in candidates if ep.inflight_requests < self._max_inflight]
            if not candidates:
                raise TooManyRequests(
                    f"every endpoint for {request.model or 'this request'} has "
                    f"{self._max_inflight} requests in flight (the configured cap); retry later",
                    retry_after_s=self._retry_after_s,
                )
        started = time.perf_counter()
        try:
            result = self._scheduler.schedule(request, candidates)
        except NoCandidates:
            metrics.scheduler_attempt(request.model, None)
            raise
        metrics.SCHEDULER_DURATION.labels().observe(time.perf_counter() - started)
        if self._defers and not self._flush_due:
            self._flush_soon()
        chosen = result.endpoints[: 1 + self._destination_fallbacks]
        metrics.scheduler_attempt(request.model, chosen[0], self.namespace)
        chosen[0].request_routed()
        if self._sharing is not None:
            self._sharing.load_changed(chosen[0])
        return RoutingDecision(
            request=request,
            endpoints=chosen,
            destination=",".join(ep.address for ep in chosen),
            candidates=len(candidates),
            health_generation=self.health.generation(chosen[0]),
            response_headers=result.response_headers,
            scores=result.scores,
        )

    def _flush_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a tool, a synchronous test): now is the next turn
            self._scheduler.flush_deferred()
            return
        self._flush_due = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        self._scheduler.flush_deferred()

    def response_started(self, decision: RoutingDecision) -> None:
        """The response's headers came (``decision.response.status`` is set): count the
        outcome for the endpoint's passive health.

        Counted here, not at :meth:`finish`, because Envoy waits for epp's answer to the
        response headers before the client sees them: a client that got a 5xx and sends
        its next request is sure to find the failure counted.
        """
        status = decision.response.status
        if decision.health_recorded or status is None or not decision.endpoints:
            return
        decision.health_recorded = True
        self.health.record(decision.endpoints[0], decision.health_generation, status)

    def response_headers(self, decision: RoutingDecision) -> list[tuple[str, str]]:
        """Headers for the client: the model epp chose for it, and with the conformance
        hooks the served endpoint."""
        headers = []
        if decision.selected_from:
            headers.append((SELECTED_MODEL_HEADER, decision.model))
        if self._conformance_hooks:
            served = conformance.served_header_value(decision.response.served_endpoint)
            headers.append((conformance.SERVED_HEADER, served))
        return headers

    def _narrowing(self, subset: Sequence[str] | None, headers: dict[str, str]) -> _Narrowing:
        """The proxy's subset hint, and with the conformance hooks the test selection."""
        selection = headers.get(conformance.SELECTION_HEADER) if self._conformance_hooks else None
        return _Narrowing(subset, selection)

    def finish(self, decision: RoutingDecision) -> None:
        """The request's stream ended (completed, failed or reset): release its load.

        ``decision.response`` says how the response went, as far as the stream showed it.
        A stream that ended with no response headers says nothing of the endpoint's
        health: the client may have gone away first.
        """
        if decision.finished:
            return
        decision.finished = True
        if decision.endpoints:
            decision.endpoints[0].request_finished()
            if self._sharing is not None:
                self._sharing.load_changed(decision.endpoints[0])
        self.response_started(decision)  # a no-op unless the stream skipped telling it


def _note_selection(decision: RoutingDecision, sent: str, selection: Selection | None) -> None:
    if selection is not None:
        decision.selected_from = sent
        decision.selection_rule = selection.rule


def _fairness_id(headers: dict[str, str]) -> str:
    for name in FAIRNESS_HEADERS:
        value = headers.get(name)
        if value:
            return value[:_MAX_FAIRNESS_ID_CHARS]
    return ""


class _Narrowing(NamedTuple):
    """What may narrow a request's candidates: the proxy's subset hint (the endpoint-
    picker protocol's), and the conformance suite's selection header."""

    subset: Sequence[str] | None
    selection: str | None  # the test-epp-endpoint-selection value, hooks on


def _allowed(endpoints: Sequence[Endpoint], narrowing: _Narrowing) -> Sequence[Endpoint]:
    """``endpoints`` narrowed to the subset hint and the test selection, if any."""
    subset, selection = narrowing
    if subset is not None:
        allowed = set(subset)
        endpoints = [ep for ep in endpoints if ep.address in allowed]
    if selection is not None:
        endpoints = conformance.selected_endpoints(selection, endpoints)
    return endpoints


def _no_ready_endpoint(what: str, narrowing: _Narrowing) -> ServiceUnavailable:
    where = ""
    if narrowing.subset is not None:
        where = " in the subset hint"
    if narrowing.selection is not None:
        where += f" among those {conformance.SELECTION_HEADER} names"
    return ServiceUnavailable(f"no ready endpoint for {what}{where}")
