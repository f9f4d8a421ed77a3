"""Fallback, passive health and 429s through the stream state machine."""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)
from google.protobuf.json_format import MessageToDict

from epp.datalayer.store import EndpointStore
from epp.director import Director
from epp.envoy_response_meter import METADATA_NAMESPACE
from epp.extproc.stream import RequestStream
from epp.requestcontrol.fallback import ModelFallbacks
from tests.unit.directors import POD_A, POD_B, director_over, fresh_store
from tests.unit.extproc.envoy_messages import body_message, headers_message, set_headers

BIG, SMALL = POD_A, POD_B
BODY = b'{"model": "big", "prompt": "p"}'


def make(**options: Any) -> tuple[Director, EndpointStore]:
    store = fresh_store({BIG: {"big"}, SMALL: {"small"}})
    director = director_over(store, fallbacks=ModelFallbacks({"big": ["small"]}), **options)
    return director, store


def response_headers(status: int) -> ProcessingRequest:
    return ProcessingRequest(
        response_headers=HttpHeaders(
            headers=HeaderMap(headers=[HeaderValue(key=":status", raw_value=str(status).encode())])
        )
    )


def routed_stream(director: Director) -> RequestStream:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message())
    stream.handle(body_message(BODY, end_of_stream=True))
    return stream


def told_scripts(answer: ProcessingResponse) -> dict[str, Any]:
    """What a routing answer tells Envoy's Lua scripts (the epp.response namespace)."""
    fields = answer.dynamic_metadata.fields
    if METADATA_NAMESPACE not in fields:
        return {}
    return MessageToDict(fields[METADATA_NAMESPACE].struct_value)


def test_a_fallback_is_named_on_the_response_headers() -> None:
    director, store = make()
    big = store.get(BIG)
    assert big is not None
    big.scrape_failures = 99
    stream = routed_stream(director)
    assert stream.decision is not None and stream.decision.destination == SMALL
    (answer,) = stream.handle(response_headers(200))
    assert set_headers(answer, "response_headers") == {"x-gateway-model-fallback": "big -> small"}
    stream.close()


def test_where_envoy_skips_response_headers_the_fallback_rides_on_the_routing_answer() -> None:
    director, store = make()
    big = store.get(BIG)
    assert big is not None
    big.scrape_failures = 99
    stream = RequestStream(director, max_body_bytes=1 << 20, response_headers_skipped=True)
    stream.handle(headers_message())
    head, _body = stream.handle(body_message(BODY, end_of_stream=True))
    assert told_scripts(head) == {"response_headers": {"x-gateway-model-fallback": "big -> small"}}
    stream.close()
    # Nothing to tell without a fallback; and nothing where Envoy sends response headers.
    plain = RequestStream(make()[0], max_body_bytes=1 << 20, response_headers_skipped=True)
    plain.handle(headers_message())
    head, _body = plain.handle(body_message(BODY, end_of_stream=True))
    assert told_scripts(head) == {}
    plain.close()
    sent = RequestStream(director, max_body_bytes=1 << 20)
    sent.handle(headers_message())
    head, _body = sent.handle(body_message(BODY, end_of_stream=True))
    assert told_scripts(head) == {}
    sent.close()


def test_no_fallback_no_header() -> None:
    director, _ = make()
    stream = routed_stream(director)
    (answer,) = stream.handle(response_headers(200))
    assert set_headers(answer, "response_headers") == {}
    stream.close()


def test_a_5xx_response_ejects_the_endpoint_before_the_client_sees_it() -> None:
    director, store = make()
    stream = routed_stream(director)
    stream.handle(response_headers(503))
    big = store.get(BIG)
    assert big is not None and director.health.in_backoff(big)
    # The next request, sent once the client has the 503, goes to the fallback model.
    following = routed_stream(director)
    assert following.decision is not None and following.decision.target_model == "small"
    stream.close()
    following.close()


def test_429_answers_carry_retry_after() -> None:
    director, _ = make(max_inflight=1, retry_after_s=4)
    holding = routed_stream(director)
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message())
    (answer,) = stream.handle(body_message(BODY, end_of_stream=True))
    immediate = answer.immediate_response
    assert immediate.status.code == 429
    headers = {h.header.key: h.header.raw_value.decode() for h in immediate.headers.set_headers}
    assert headers["retry-after"] == "4"
    assert headers["x-llm-d-request-dropped-reason"] == "rejected-saturated"
    assert b"no_capacity" in immediate.body
    stream.close()
    holding.close()
