"""GET /v1/models and /v1/models/{id}: the director answers for the pool."""

from __future__ import annotations

import time
from dataclasses import replace

import orjson
import pytest

from epp.datalayer.endpoint import Metrics
from epp.datalayer.store import EndpointStore
from epp.errors import BadRequest, ModelNotFound, ServiceUnavailable
from epp.requestcontrol import catalog
from epp.requestcontrol.conformance import SELECTION_HEADER
from epp.routing import LocalAnswer
from tests.unit.directors import POD_A, POD_B, POD_C, POD_D, director_over, fresh_store


def get(path: str, **extra: str) -> dict[str, str]:
    return {":method": "GET", ":path": path, **extra}


def listed_ids(answer: LocalAnswer | None) -> list[str]:
    assert answer is not None and answer.status == 200
    assert answer.content_type == "application/json"
    document = orjson.loads(answer.body)
    assert document["object"] == "list"
    return [model["id"] for model in document["data"]]


@pytest.fixture
def store() -> EndpointStore:
    """Static pods: A and B serve "qwen", C "gemma" and an adapter; D "ghost", never scraped."""
    store = fresh_store({POD_A: {"qwen"}, POD_B: {"qwen"}, POD_C: {"gemma", "gemma-lora"}})
    store.replace([*((ep.address, ep.models) for ep in store.all()), (POD_D, frozenset({"ghost"}))])
    return store


def test_the_list_is_the_union_of_the_ready_endpoints_models(store: EndpointStore) -> None:
    director = director_over(store)
    answer = director.local_answer(method="GET", headers=get("/v1/models"))
    assert listed_ids(answer) == ["gemma", "gemma-lora", "qwen"]  # not ghost: D is not ready


def test_one_model_by_id(store: EndpointStore) -> None:
    director = director_over(store)
    answer = director.local_answer(method="GET", headers=get("/v1/models/gemma-lora"))
    assert answer is not None and answer.status == 200
    model = orjson.loads(answer.body)
    assert (model["id"], model["object"], model["owned_by"]) == ("gemma-lora", "model", "epp")
    assert isinstance(model["created"], int)


def test_a_model_no_endpoint_serves_is_not_found(store: EndpointStore) -> None:
    director = director_over(store)
    with pytest.raises(ModelNotFound) as caught:
        director.local_answer(method="GET", headers=get("/v1/models/nope"))
    assert caught.value.code == "model_not_found" and caught.value.status == 404
    with pytest.raises(BadRequest):
        director.local_answer(method="GET", headers=get("/v1/models/a%00b"))


def test_a_model_only_unready_endpoints_serve_is_unavailable(store: EndpointStore) -> None:
    director = director_over(store)
    with pytest.raises(ServiceUnavailable):
        director.local_answer(method="GET", headers=get("/v1/models/ghost"))


def test_discovered_endpoints_serve_what_their_metrics_name() -> None:
    store = EndpointStore()
    store.replace([(POD_A, None), (POD_B, None), (POD_C, None)])
    now = time.monotonic()
    a, b, c = store.all()
    a.metrics = Metrics(models=frozenset({"llama"}), updated_at=now)
    b.metrics = Metrics(
        models=frozenset({"llama"}),
        lora_running=frozenset({"sql-lora"}),
        lora_waiting=frozenset({"chat-lora"}),
        updated_at=now,
    )
    c.metrics = Metrics(updated_at=now)  # labels no model: adds nothing
    director = director_over(store)
    answer = director.local_answer(method="GET", headers=get("/v1/models"))
    assert listed_ids(answer) == ["chat-lora", "llama", "sql-lora"]
    assert director.local_answer(method="GET", headers=get("/v1/models/sql-lora")) is not None


def test_when_no_ready_endpoint_says_what_it_serves_one_of_them_answers() -> None:
    store = EndpointStore()
    store.replace([(POD_A, None)])
    store.all()[0].metrics = Metrics(updated_at=time.monotonic())
    director = director_over(store)
    assert director.local_answer(method="GET", headers=get("/v1/models")) is None
    assert director.local_answer(method="GET", headers=get("/v1/models/x")) is None
    decision = director.route_without_body(method="GET", request_id="r", headers=get("/v1/models"))
    assert decision.destination == POD_A
    director.finish(decision)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/models"), ("DELETE", "/v1/models/qwen"), ("GET", "/health")],
)
def test_other_requests_are_left_to_routing(store: EndpointStore, method: str, path: str) -> None:
    director = director_over(store)
    assert director.local_answer(method=method, headers={":method": method, ":path": path}) is None


def test_body_based_routing_mode_leaves_it_to_the_pools_picker(store: EndpointStore) -> None:
    director = director_over(store, pick_endpoints=False)
    assert director.local_answer(method="GET", headers=get("/v1/models")) is None


def test_the_subset_hint_narrows_the_list(store: EndpointStore) -> None:
    director = director_over(store)
    answer = director.local_answer(method="GET", headers=get("/v1/models"), subset=[POD_C])
    assert listed_ids(answer) == ["gemma", "gemma-lora"]
    with pytest.raises(ModelNotFound):
        director.local_answer(method="GET", headers=get("/v1/models/qwen"), subset=[POD_C])


def test_a_conformance_selection_is_answered_by_the_selected_pod(store: EndpointStore) -> None:
    director = director_over(store, conformance_hooks=True)
    headers = get("/v1/models", **{SELECTION_HEADER: POD_C})
    assert director.local_answer(method="GET", headers=headers) is None
    decision = director.route_without_body(method="GET", request_id="r", headers=headers)
    assert decision.destination == POD_C
    director.finish(decision)
    # Without the hooks the header means nothing: epp answers.
    assert director_over(store).local_answer(method="GET", headers=headers) is not None


def test_the_list_is_bounded() -> None:
    many = {f"10.0.{i // 250}.{i % 250}:8000": {f"model-{i:04}"} for i in range(300)}
    store = fresh_store(many)
    director = director_over(store)
    ids = listed_ids(director.local_answer(method="GET", headers=get("/v1/models")))
    assert ids == sorted(f"model-{i:04}" for i in range(catalog.MAX_LISTED_MODELS))
    # Past the list's bound a model is still found by its id.
    assert director.local_answer(method="GET", headers=get("/v1/models/model-0299")) is not None


def test_served_models_of_an_endpoint() -> None:
    store = fresh_store({POD_A: {"static"}})
    (endpoint,) = store.all()
    endpoint.metrics = replace(endpoint.metrics, models=frozenset({"scraped"}))
    assert endpoint.served_models() == frozenset({"static"})  # configured models win
    endpoint.models = None
    assert endpoint.served_models() == frozenset({"scraped"})
    endpoint.metrics = replace(endpoint.metrics, models=frozenset())
    assert endpoint.served_models() is None
