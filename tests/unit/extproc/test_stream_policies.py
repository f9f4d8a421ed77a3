"""Rewrites, objectives, shedding and body-based routing, through the stream state machine."""

from __future__ import annotations

import orjson
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    ProcessingRequest,
    ProtocolConfiguration,
)

from epp.datalayer.store import EndpointStore
from epp.director import Director
from epp.extproc.stream import RequestStream
from epp.requestcontrol.objectives import OBJECTIVE_HEADER, Objectives
from epp.requestcontrol.rewrite import MODEL_REWRITE_HEADER, ModelRewrites, RewriteRule
from tests.unit.directors import POD_A, POD_B, director_over, fresh_store
from tests.unit.extproc.envoy_messages import (
    BUFFERED,
    FULL_DUPLEX,
    body_message,
    headers_message,
    set_headers,
)


def make_director(
    *, waiting: int = 0, pick_endpoints: bool = True, rewrites: ModelRewrites | None = None
) -> tuple[Director, EndpointStore]:
    store = fresh_store({POD_A: {"m", "m-v2"}, POD_B: {"m", "m-v2"}}, waiting_requests=waiting)
    director = director_over(
        store,
        rewrites=rewrites,
        objectives=Objectives({"batch": -1, "chat": 5}),
        pick_endpoints=pick_endpoints,
    )
    return director, store


def response_body(data: bytes, *, end: bool) -> ProcessingRequest:
    return ProcessingRequest(response_body=HttpBody(body=data, end_of_stream=end))


def test_rewrite_changes_the_upstream_body_and_restores_the_response() -> None:
    rewrites = ModelRewrites([RewriteRule(frozenset({"m"}), ("m-v2",), (1,))])
    director, _ = make_director(rewrites=rewrites)
    stream = RequestStream(director, max_body_bytes=1 << 20)
    message = headers_message()
    message.protocol_config.CopyFrom(
        ProtocolConfiguration(request_body_mode=FULL_DUPLEX, response_body_mode=FULL_DUPLEX)
    )
    stream.handle(message)
    head, *chunks = stream.handle(
        body_message(b'{"model": "m", "prompt": "hello"}', end_of_stream=True)
    )
    assert set_headers(head, "request_headers")["x-gateway-model-name"] == "m"
    sent = b"".join(c.request_body.response.body_mutation.streamed_response.body for c in chunks)
    assert orjson.loads(sent) == {"model": "m-v2", "prompt": "hello"}

    (echo,) = stream.handle(response_body(b'data: {"model":"m-v2","choices":[]}\n\n', end=False))
    assert echo.response_body.response.body_mutation.streamed_response.body == (
        b'data: {"model":"m","choices":[]}\n\n'
    )
    stream.close()


def test_rewrite_in_buffered_mode_mutates_the_body() -> None:
    director, _ = make_director()
    director.rewrites.honour_header = True
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message(body_mode=BUFFERED, extra={MODEL_REWRITE_HEADER: "m-v2"}))
    (answer,) = stream.handle(body_message(b'{"model":"m","prompt":"p"}', end_of_stream=True))
    assert set_headers(answer, "request_body")["x-gateway-model-name"] == "m"
    assert orjson.loads(answer.request_body.response.body_mutation.body)["model"] == "m-v2"
    stream.close()


def test_sheddable_requests_get_429_only_when_the_pool_is_saturated() -> None:
    body = b'{"model": "m", "prompt": "p"}'
    for waiting, objective, expected in [
        (10, "batch", 429),
        (10, "chat", None),
        (0, "batch", None),
        (10, None, None),
    ]:
        director, store = make_director(waiting=waiting)
        stream = RequestStream(director, max_body_bytes=1 << 20)
        stream.handle(headers_message(extra={OBJECTIVE_HEADER: objective} if objective else {}))
        (first, *_) = stream.handle(body_message(body, end_of_stream=True))
        if expected is None:
            assert first.WhichOneof("response") == "request_headers", (waiting, objective)
        else:
            assert first.immediate_response.status.code == expected
            assert b"saturated" in first.immediate_response.body
            assert all(ep.inflight_requests == 0 for ep in store.all())
        stream.close()


def test_empty_pool_is_503_not_404() -> None:
    director, store = make_director()
    store.replace([])
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message())
    (answer,) = stream.handle(body_message(b'{"model": "m", "prompt": "p"}', end_of_stream=True))
    assert answer.immediate_response.status.code == 503


def test_body_based_routing_sets_only_the_model_header() -> None:
    director, store = make_director(pick_endpoints=False)
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message())
    head, *chunks = stream.handle(
        body_message(b'{"model": "m", "prompt": "p"}', end_of_stream=True)
    )
    assert set_headers(head, "request_headers") == {"x-gateway-model-name": "m"}
    assert head.request_headers.response.clear_route_cache
    assert not head.HasField("dynamic_metadata")
    assert chunks
    stream.close()
    assert all(ep.inflight_requests == 0 for ep in store.all())
