"""The director's candidate rules: health, model fallback, shedding and the in-flight cap."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.datalayer.store import EndpointStore
from epp.director import Director
from epp.errors import ModelNotFound, ServiceUnavailable, TooManyRequests
from epp.requestcontrol.fallback import ModelFallbacks
from epp.requestcontrol.health import PassiveHealth
from epp.requestcontrol.objectives import OBJECTIVE_HEADER, Objectives
from epp.requestcontrol.rewrite import MODEL_REWRITE_HEADER
from epp.routing import RoutingDecision
from tests.unit.directors import POD_A, POD_B, POD_C, POD_D, director_over, fresh_store

BIG, SMALL1, SMALL2, TINY = POD_A, POD_B, POD_C, POD_D


def make_director(**options: Any) -> tuple[Director, EndpointStore]:
    store = fresh_store({BIG: {"big"}, SMALL1: {"small"}, SMALL2: {"small"}, TINY: {"tiny"}})
    options.setdefault("fallbacks", ModelFallbacks({"big": ["small", "tiny"]}))
    return director_over(store, **options), store


def route(
    director: Director,
    model: str,
    headers: dict[str, str] | None = None,
    subset: list[str] | None = None,
) -> RoutingDecision:
    body = orjson.dumps({"model": model, "prompt": "hello"})
    return director.route_body(body, request_id="r", headers=headers or {}, subset=subset)


def endpoint(store: EndpointStore, address: str) -> Endpoint:
    found = store.get(address)
    assert found is not None
    return found


def eject(director: Director, store: EndpointStore, address: str) -> None:
    ep = endpoint(store, address)
    director.health.record(ep, director.health.generation(ep), 503)


def unready(store: EndpointStore, address: str) -> None:
    endpoint(store, address).scrape_failures = 99


def test_a_healthy_model_is_served_as_asked() -> None:
    director, _ = make_director()
    decision = route(director, "big")
    assert decision.destination == BIG
    assert (decision.model, decision.target_model, decision.fallback_from) == ("big", "big", "")
    assert not decision.rewritten


@pytest.mark.parametrize("how", ["unready", "ejected", "stale"])
def test_no_healthy_endpoint_falls_back_to_the_first_model_that_has_one(how: str) -> None:
    director, store = make_director()
    if how == "unready":
        unready(store, BIG)
    elif how == "ejected":
        eject(director, store, BIG)
    else:
        endpoint(store, BIG).metrics = Metrics(updated_at=time.monotonic() - 60)
    decision = route(director, "big")
    assert decision.destination in (SMALL1, SMALL2)
    assert (decision.model, decision.target_model, decision.fallback_from) == (
        "big",
        "small",
        "big",
    )
    assert decision.rewritten  # the body is rewritten to the fallback, as for a rewrite


def test_the_next_fallback_is_tried_in_order() -> None:
    director, store = make_director()
    for address in (BIG, SMALL1):
        unready(store, address)
    eject(director, store, SMALL2)
    decision = route(director, "big")
    assert (decision.destination, decision.target_model) == (TINY, "tiny")


def test_unhealthy_endpoints_still_serve_when_no_fallback_is_healthy() -> None:
    director, store = make_director()
    eject(director, store, BIG)
    for address in (SMALL1, SMALL2, TINY):
        unready(store, address)
    decision = route(director, "big")
    assert (decision.destination, decision.fallback_from) == (BIG, "")


def test_no_ready_endpoint_and_no_fallback_is_503_and_an_unknown_model_404() -> None:
    director, store = make_director()
    unready(store, TINY)
    with pytest.raises(ServiceUnavailable):
        route(director, "tiny")
    with pytest.raises(ModelNotFound):
        route(director, "nobody-serves-this")


def test_a_model_nobody_serves_falls_back_when_it_has_fallbacks() -> None:
    director, _ = make_director(fallbacks=ModelFallbacks({"retired": ["small"]}))
    decision = route(director, "retired")
    assert (decision.target_model, decision.fallback_from) == ("small", "retired")


def test_a_rewritten_model_uses_its_own_fallbacks_else_the_requested_ones() -> None:
    director, store = make_director(fallbacks=ModelFallbacks({"alias": ["tiny"]}))
    director.rewrites.honour_header = True
    unready(store, BIG)
    decision = route(director, "alias", {MODEL_REWRITE_HEADER: "big"})
    assert (decision.model, decision.fallback_from, decision.target_model) == (
        "alias",
        "big",
        "tiny",
    )


def test_the_subset_hint_bounds_the_fallbacks_too() -> None:
    director, store = make_director()
    unready(store, BIG)
    decision = route(director, "big", subset=[BIG, SMALL2])
    assert decision.destination == SMALL2
    with pytest.raises(ServiceUnavailable, match="subset"):
        route(director, "big", subset=[BIG])


def test_shedding_looks_at_the_candidates_actually_used() -> None:
    director, store = make_director(objectives=Objectives({"batch": -1}), retry_after_s=7)
    endpoint(store, BIG).metrics = Metrics(waiting_requests=50, updated_at=time.monotonic())
    with pytest.raises(TooManyRequests) as shed:
        route(director, "big", {OBJECTIVE_HEADER: "batch"})
    assert (shed.value.code, shed.value.retry_after_s) == ("pool_saturated", 7)
    assert shed.value.dropped_reason == "rejected-saturated"  # the reference's header value
    assert route(director, "big").destination == BIG  # priority 0 still routes
    # With the big pod gone the fallback's (idle) pods are the candidates: no shedding.
    unready(store, BIG)
    assert route(director, "big", {OBJECTIVE_HEADER: "batch"}).target_model == "small"


def test_the_inflight_cap_spreads_then_refuses_with_retry_after() -> None:
    director, _ = make_director(max_inflight=1, retry_after_s=3)
    first, second = route(director, "small"), route(director, "small")
    assert {first.destination, second.destination} == {SMALL1, SMALL2}
    with pytest.raises(TooManyRequests) as refused:
        route(director, "small")
    assert (refused.value.code, refused.value.retry_after_s) == ("no_capacity", 3)
    director.finish(first)
    assert route(director, "small").destination == first.destination


def test_the_cap_does_not_trigger_a_fallback() -> None:
    director, _ = make_director(max_inflight=1)
    route(director, "big")
    with pytest.raises(TooManyRequests):
        route(director, "big")  # full is not unhealthy: no quieter fallback model


def test_response_headers_feed_passive_health_once() -> None:
    director, store = make_director(
        health=PassiveHealth(initial_backoff_s=30.0, max_backoff_s=60.0)
    )
    decision = route(director, "big")
    decision.response.status = 503
    director.response_started(decision)
    assert director.health.in_backoff(endpoint(store, BIG))
    director.finish(decision)  # counted already: finish does not count it again
    assert director.health.generation(endpoint(store, BIG)) == 1
    assert route(director, "big").target_model == "small"


def test_a_stream_without_a_response_blames_no_one() -> None:
    director, store = make_director()
    decision = route(director, "big")  # the client left before any response came
    director.finish(decision)
    assert not director.health.in_backoff(endpoint(store, BIG))
    assert endpoint(store, BIG).inflight_requests == 0


def test_requests_without_a_body_prefer_healthy_endpoints() -> None:
    director, store = make_director()
    for address in (BIG, SMALL1, SMALL2):
        eject(director, store, address)
    decision = director.route_without_body(method="GET", request_id="r", headers={})
    assert decision.destination == TINY
    eject(director, store, TINY)  # all ejected: any ready endpoint rather than none
    assert director.route_without_body(method="GET", request_id="r", headers={}).endpoints


def test_fallback_chains_are_validated() -> None:
    with pytest.raises(ValueError, match="itself"):
        ModelFallbacks({"a": ["b", "a"]})
    with pytest.raises(ValueError, match="twice"):
        ModelFallbacks({"a": ["b", "b"]})
    assert ModelFallbacks({"a": []}).of("a") == ()
