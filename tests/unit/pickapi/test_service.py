"""The Pick API over a real gRPC socket, through ``epp.client``: routing, in-flight
accounting, error codes and messages, bounds on what a caller sends, and reflection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from epp.client import PickClient, PickError
from epp.datalayer.store import EndpointStore
from epp.director import Director
from epp.errors import EppError
from epp.observability import metrics, request_metrics
from epp.observability.request_metrics import FinishedRequest, outcome_of
from epp.pickapi.service import MAX_HEADER_BYTES, MAX_HEADERS, PickService
from epp.requestcontrol.rewrite import MODEL_REWRITE_HEADER, ModelRewrites
from epp.server import _enable_reflection
from tests.unit.directors import POD_A, POD_B, director_over, fresh_store

pytestmark = pytest.mark.asyncio

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


@asynccontextmanager
async def serving(
    director: Director, **options: Any
) -> AsyncIterator[tuple[PickClient, PickService]]:
    """A gRPC server with only the Pick API over ``director``, and a client of it."""
    service = PickService(
        director,
        max_body_bytes=options.pop("max_body_bytes", 1 << 20),
        timeout_s=options.pop("timeout_s", 600.0),
        max_outstanding=options.pop("max_outstanding", 100),
    )
    server = grpc.aio.server()
    service.add_to(server)
    _enable_reflection(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with PickClient(f"127.0.0.1:{port}") as client:
            yield client, service
    finally:
        service.close()
        await server.stop(None)


@pytest.fixture
def store() -> EndpointStore:
    return fresh_store({POD_A: {"m"}, POD_B: {"m"}})


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[FinishedRequest]:
    seen: list[FinishedRequest] = []
    monkeypatch.setattr(request_metrics, "record_finished", seen.append)
    return seen


def inflight(store: EndpointStore) -> dict[str, int]:
    return {ep.address: ep.inflight_requests for ep in store.all()}


async def test_a_pick_is_in_flight_until_finished(
    store: EndpointStore, recorded: list[FinishedRequest]
) -> None:
    async with serving(director_over(store)) as (client, service):
        picked = await client.pick(BODY, headers={"X-Request-Id": "req-1"})
        assert picked.endpoint in (POD_A, POD_B)
        assert (picked.request_id, picked.model, picked.body) == ("req-1", "m", None)
        assert inflight(store)[picked.endpoint] == 1 and len(service.outstanding) == 1
        await client.finish(
            picked.request_id,
            status=200,
            streamed=True,
            prompt_tokens=12,
            completion_tokens=30,
            cached_tokens=8,
            time_to_first_token_s=0.0,
            response_bytes=999,
        )
        assert inflight(store) == {POD_A: 0, POD_B: 0}
        with pytest.raises(PickError) as twice:
            await client.finish(picked.request_id, status=200)
    assert twice.value.grpc_code is grpc.StatusCode.NOT_FOUND
    (finished,) = recorded
    assert outcome_of(finished) == "completed"
    decision = finished.decision
    assert decision is not None and decision.destination == picked.endpoint
    response = decision.response
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.cached_tokens) == (12, 8)
    assert response.first_token_at == finished.received_at  # ttft 0 from the pick
    assert (response.status, response.streamed, response.body_bytes) == (200, True, 999)
    assert decision.request.prompt == ""  # what waited for the Finish kept no prompt


async def test_a_failed_request_counts_against_its_endpoint(
    store: EndpointStore, recorded: list[FinishedRequest]
) -> None:
    director = director_over(store)
    async with serving(director) as (client, _):
        picked = await client.pick(BODY)
        await client.finish(picked.request_id, status=0, completed=False)
        picked = await client.pick(BODY)
        await client.finish(picked.request_id, status=503)
    assert [outcome_of(f) for f in recorded] == ["no_response", "upstream_error"]
    assert inflight(store) == {POD_A: 0, POD_B: 0}


async def test_the_same_prefix_goes_to_the_same_endpoint(store: EndpointStore) -> None:
    system = "You are a careful assistant. " * 40
    async with serving(director_over(store)) as (client, _):
        chosen = set()
        for turn in range(4):
            body = {
                "model": "m",
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"question {turn}"},
                ],
            }
            picked = await client.pick(json.dumps(body).encode())
            chosen.add(picked.endpoint)
            await client.finish(picked.request_id, status=200)
    assert len(chosen) == 1


async def test_scores_are_given_when_asked(store: EndpointStore) -> None:
    async with serving(director_over(store)) as (client, _):
        plain = await client.pick(BODY)
        explained = await client.pick(BODY, include_scores=True)
    assert plain.scores == ()
    assert {score.endpoint for score in explained.scores} == {POD_A, POD_B}
    for score in explained.scores:
        assert score.scorers  # the default profile's scorers, by "type/name"
        assert all("/" in name for name in score.scorers)
        assert score.total == pytest.approx(sum(score.scorers.values()))
    best = max(score.total for score in explained.scores)
    chosen = next(score for score in explained.scores if score.endpoint == explained.endpoint)
    assert chosen.total == best
    # The in-flight scorer sees the first (unfinished) pick: the endpoints differ.
    assert len({score.total for score in explained.scores}) == 2


async def test_a_model_named_apart_needs_no_body(store: EndpointStore) -> None:
    async with serving(director_over(store)) as (client, _):
        picked = await client.pick(model="m")
        assert picked.endpoint in (POD_A, POD_B) and picked.model == "m"
        # The body's own model is not read when one is named.
        picked = await client.pick(b'{"messages": []}', model="m")
        assert picked.model == "m"


async def test_a_rewritten_model_comes_back_with_the_body_to_send(store: EndpointStore) -> None:
    director = director_over(store, rewrites=ModelRewrites(honour_header=True))
    body = json.dumps({"model": "alias", "prompt": "x"}).encode()
    async with serving(director) as (client, _):
        picked = await client.pick(body, headers={MODEL_REWRITE_HEADER: "m"})
    assert picked.model == "m"
    assert picked.body is not None
    assert json.loads(picked.body) == {"model": "m", "prompt": "x"}


@pytest.mark.parametrize(
    ("body", "director_options", "code", "status"),
    [
        (b"{not json", {}, grpc.StatusCode.INVALID_ARGUMENT, 400),
        (b'{"prompt": "x"}', {}, grpc.StatusCode.INVALID_ARGUMENT, 400),
        (b'{"model": "nope", "prompt": "x"}', {}, grpc.StatusCode.NOT_FOUND, 404),
        (BODY, {"unready_after_failures": 0}, grpc.StatusCode.UNAVAILABLE, 503),
        (BODY, {"max_inflight": 1}, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    ],
    ids=["invalid-json", "no-model", "unknown-model", "none-ready", "no-capacity"],
)
async def test_errors_are_grpc_codes_with_the_http_errors_messages(
    body: bytes,
    director_options: dict[str, Any],
    code: grpc.StatusCode,
    status: int,
) -> None:
    def make() -> tuple[EndpointStore, Director]:
        store = fresh_store({POD_A: {"m"}})
        return store, director_over(store, **director_options)

    # What an Envoy client would be told, from a director of its own in the same state.
    _, expected_director = make()
    if director_options.get("max_inflight"):
        expected_director.route_body(BODY, request_id="fill", headers={})
    with pytest.raises(EppError) as expected:
        expected_director.route_body(body, request_id="x", headers={})

    _, director = make()
    async with serving(director) as (client, _):
        if director_options.get("max_inflight"):
            await client.pick(BODY)  # the one pod is at the cap now
        with pytest.raises(PickError) as caught:
            await client.pick(body)
    error = caught.value
    assert error.grpc_code is code
    assert error.message == expected.value.message
    assert (error.status, error.code) == (status, expected.value.code)
    assert error.error_type == expected.value.error_type
    assert json.loads(error.openai_body())["error"]["message"] == error.message
    if status == 429:
        assert error.retry_after_s == 1 and error.dropped_reason == "rejected-saturated"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.pick(b"x" * 1025), "request body is over 1024 bytes"),
        (
            lambda c: c.pick(BODY, headers={f"h{i}": "" for i in range(MAX_HEADERS + 1)}),
            f"at most {MAX_HEADERS}",
        ),
        (
            lambda c: c.pick(BODY, headers={"a": "x" * MAX_HEADER_BYTES}),
            f"over {MAX_HEADER_BYTES} characters",
        ),
        (lambda c: c.pick(BODY, subset=["10.0.0.1:8000"] * 1025), "at most 1024"),
        (lambda c: c.pick(BODY, model="bad\nname"), "'model'"),
    ],
    ids=["body", "header-count", "header-bytes", "subset", "model-name"],
)
async def test_what_a_caller_sends_is_bounded(
    store: EndpointStore, call: Callable[[PickClient], Any], message: str
) -> None:
    async with serving(director_over(store), max_body_bytes=1024) as (client, service):
        with pytest.raises(PickError) as caught:
            await call(client)
        assert caught.value.grpc_code is grpc.StatusCode.INVALID_ARGUMENT
        assert message in caught.value.message
        assert len(service.outstanding) == 0
    assert inflight(store) == {POD_A: 0, POD_B: 0}


async def test_a_hostile_request_id_is_replaced(store: EndpointStore) -> None:
    async with serving(director_over(store)) as (client, _):
        first = await client.pick(BODY, headers={"x-request-id": "same"})
        again = await client.pick(BODY, headers={"x-request-id": "same"})  # in flight
        odd = await client.pick(BODY, headers={"x-request-id": "a\x00b" + "c" * 200})
    assert first.request_id == "same"
    assert again.request_id != "same" and len(again.request_id) == 32
    assert odd.request_id.isalnum() and len(odd.request_id) == 32


@pytest.mark.parametrize(
    "options",
    [
        {"status": 700},
        {"status": 200, "duration_s": float("nan")},
        {"status": 200, "time_to_first_token_s": -1.0},
    ],
    ids=["status", "duration", "ttft"],
)
async def test_a_nonsense_finish_is_refused_and_the_pick_stays(
    store: EndpointStore, options: dict[str, Any]
) -> None:
    async with serving(director_over(store)) as (client, _):
        picked = await client.pick(BODY)
        with pytest.raises(PickError) as caught:
            await client.finish(picked.request_id, **options)
        assert caught.value.grpc_code is grpc.StatusCode.INVALID_ARGUMENT
        assert inflight(store)[picked.endpoint] == 1
        await client.finish(picked.request_id, status=200)
    assert inflight(store) == {POD_A: 0, POD_B: 0}


def released(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "epp_pick_released_unfinished_total", {"reason": reason}
    )
    return value or 0.0


async def test_past_the_cap_the_oldest_pick_is_released(store: EndpointStore) -> None:
    before = released("evicted")
    async with serving(director_over(store), max_outstanding=2) as (client, service):
        first, *_ = [await client.pick(BODY) for _ in range(3)]
        assert len(service.outstanding) == 2
        assert sum(inflight(store).values()) == 2
        with pytest.raises(PickError) as caught:
            await client.finish(first.request_id, status=200)
    assert caught.value.grpc_code is grpc.StatusCode.NOT_FOUND
    assert released("evicted") == before + 1


async def test_an_unfinished_pick_is_released_after_the_timeout(store: EndpointStore) -> None:
    before = released("timeout")
    async with serving(director_over(store), timeout_s=0.05) as (client, service):
        await client.pick(BODY)
        assert sum(inflight(store).values()) == 1
        for _ in range(1000):  # the ledger's timer releases it; no call needed
            if not len(service.outstanding):
                break
            await asyncio.sleep(0.01)
    assert sum(inflight(store).values()) == 0
    assert released("timeout") == before + 1


async def test_reflection_lists_the_pick_api(store: EndpointStore) -> None:
    async with serving(director_over(store)) as (client, _):
        stub = reflection_pb2_grpc.ServerReflectionStub(client._channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
        names = {s.name for s in responses[0].list_services_response.service}
        request = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="epp.v1.EndpointPicker"
        )
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    assert {"epp.v1.EndpointPicker", reflection.SERVICE_NAME} <= names
    assert responses[0].file_descriptor_response.file_descriptor_proto
