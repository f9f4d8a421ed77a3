"""The per-stream state machine, fed Envoy's messages in memory (no gRPC)."""

from __future__ import annotations

import orjson
import pytest
from envoy.config.core.v3.base_pb2 import Metadata
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpHeaders,
    HttpTrailers,
    ProcessingRequest,
)
from google.protobuf.struct_pb2 import Struct

from epp.datalayer.store import EndpointStore
from epp.director import Director
from epp.extproc.messages import MAX_STREAMED_CHUNK_BYTES
from epp.extproc.stream import Phase, RequestStream
from epp.observability import metrics, request_metrics
from epp.observability.request_metrics import FinishedRequest
from tests.unit.directors import POD_A, POD_B, POD_C, fresh_store
from tests.unit.extproc.envoy_messages import (
    BUFFERED,
    FULL_DUPLEX,
    body_message,
    headers_message,
    lb_destination,
    set_headers,
)


@pytest.fixture
def store() -> EndpointStore:
    """POD_A and POD_B serve "m", POD_C another model."""
    return fresh_store({POD_A: {"m"}, POD_B: {"m"}, POD_C: {"other"}})


def test_full_duplex_answers_after_the_whole_body(director: Director, store: EndpointStore) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 100}]})
    assert stream.handle(headers_message()) == ()
    assert stream.handle(body_message(body[:50], end_of_stream=False)) == ()
    responses = stream.handle(body_message(body[50:], end_of_stream=True))

    head, *chunks = responses
    assert head.WhichOneof("response") == "request_headers"
    assert head.request_headers.response.clear_route_cache
    mutation = set_headers(head, "request_headers")
    assert mutation["x-gateway-model-name"] == "m"
    assert mutation["x-gateway-destination-endpoint"] in (POD_A, POD_B)
    assert lb_destination(head) == mutation["x-gateway-destination-endpoint"]
    streamed = [c.request_body.response.body_mutation.streamed_response for c in chunks]
    assert b"".join(s.body for s in streamed) == body
    assert [s.end_of_stream for s in streamed] == [False] * (len(streamed) - 1) + [True]

    chosen = store.get(mutation["x-gateway-destination-endpoint"])
    assert chosen is not None and chosen.inflight_requests == 1
    stream.close()
    assert chosen.inflight_requests == 0


def test_buffered_mode_puts_the_mutation_on_the_body_response(director: Director) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    (head,) = stream.handle(headers_message(body_mode=BUFFERED))
    assert head.WhichOneof("response") == "request_headers"
    assert not head.request_headers.response.HasField("header_mutation")
    (answer,) = stream.handle(body_message(b'{"model": "m", "prompt": "p"}', end_of_stream=True))
    assert answer.WhichOneof("response") == "request_body"
    assert set_headers(answer, "request_body")["x-gateway-destination-endpoint"] in (POD_A, POD_B)
    assert not answer.request_body.response.HasField("body_mutation")  # body untouched


def test_request_without_body_is_routed_on_headers(director: Director) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    (answer,) = stream.handle(headers_message(method="GET", path="/health", end_of_stream=True))
    mutation = set_headers(answer, "request_headers")
    assert mutation["x-gateway-destination-endpoint"] in (POD_A, POD_B, POD_C)
    assert "x-gateway-model-name" not in mutation
    assert stream.phase is Phase.ROUTED


def test_the_pools_models_are_answered_on_the_headers(
    director: Director, recorded: list[FinishedRequest]
) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    (answer,) = stream.handle(headers_message(method="GET", path="/v1/models", end_of_stream=True))
    assert answer.WhichOneof("response") == "immediate_response"
    immediate = answer.immediate_response
    assert immediate.status.code == 200
    document = orjson.loads(immediate.body)
    assert [m["id"] for m in document["data"]] == ["m", "other"]
    headers = {h.header.key: h.header.raw_value for h in immediate.headers.set_headers}
    assert headers["content-type"] == b"application/json"
    assert stream.phase is Phase.ANSWERED
    stream.close()
    (finished,) = recorded
    assert request_metrics.outcome_of(finished) == "answered"
    assert finished.answered_status == 200


def test_an_unknown_model_id_is_a_404_on_the_headers(director: Director) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    (answer,) = stream.handle(
        headers_message(method="GET", path="/v1/models/nope", end_of_stream=True)
    )
    assert answer.immediate_response.status.code == 404
    error = orjson.loads(answer.immediate_response.body)["error"]
    assert error["code"] == "model_not_found"


def test_body_ending_in_trailers(director: Director) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message())
    stream.handle(body_message(b'{"model": "m"}', end_of_stream=False))
    responses = list(stream.handle(ProcessingRequest(request_trailers=HttpTrailers())))
    kinds = [r.WhichOneof("response") for r in responses]
    assert kinds == ["request_headers", "request_body", "request_trailers"]
    assert not responses[1].request_body.response.body_mutation.streamed_response.end_of_stream


def test_large_body_is_streamed_back_in_bounded_chunks(director: Director) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 22)
    body = b'{"model": "m", "prompt": "' + b"y" * 200_000 + b'"}'
    stream.handle(headers_message())
    _, *chunks = stream.handle(body_message(body, end_of_stream=True))
    pieces = [c.request_body.response.body_mutation.streamed_response.body for c in chunks]
    assert max(len(p) for p in pieces) <= MAX_STREAMED_CHUNK_BYTES
    assert b"".join(pieces) == body


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"nope", 400, "invalid_json"),
        (b'{"model": "unknown", "prompt": "p"}', 404, "model_not_found"),
    ],
    ids=["bad-json", "unknown-model"],
)
def test_errors_become_immediate_responses(
    director: Director, body: bytes, status: int, code: str
) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message())
    (answer,) = stream.handle(body_message(body, end_of_stream=True))
    immediate = answer.immediate_response
    assert immediate.status.code == status
    assert orjson.loads(immediate.body)["error"]["code"] == code
    assert stream.phase is Phase.ANSWERED
    stream.close()  # nothing was routed, nothing to release


def test_too_large_body_gets_413_without_waiting_for_the_rest(director: Director) -> None:
    stream = RequestStream(director, max_body_bytes=10)
    stream.handle(headers_message())
    (answer,) = stream.handle(body_message(b"x" * 11, end_of_stream=False))
    assert answer.immediate_response.status.code == 413
    assert stream.handle(body_message(b"x", end_of_stream=True)) == ()


def test_no_ready_endpoint_is_503(director: Director, store: EndpointStore) -> None:
    for endpoint in store.serving("m"):
        endpoint.scrape_failures = 10
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message())
    (answer,) = stream.handle(body_message(b'{"model": "m"}', end_of_stream=True))
    assert answer.immediate_response.status.code == 503
    headers = {
        h.header.key: h.header.raw_value for h in answer.immediate_response.headers.set_headers
    }
    assert headers["x-llm-d-request-dropped-reason"] == b"rejected-no-endpoints"


def test_a_request_epp_refuses_for_what_it_asked_names_no_dropped_reason(
    director: Director,
) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message())
    (answer,) = stream.handle(body_message(b'{"model": "nobody-serves-this"}', end_of_stream=True))
    assert answer.immediate_response.status.code == 404
    keys = [h.header.key for h in answer.immediate_response.headers.set_headers]
    assert "x-llm-d-request-dropped-reason" not in keys


def _subset_metadata(addresses: list[str]) -> Metadata:
    hint = Struct()
    hint.get_or_create_list("x-gateway-destination-endpoint-subset").extend(addresses)
    metadata = Metadata()
    metadata.filter_metadata["envoy.lb.subset_hint"].CopyFrom(hint)
    return metadata


def test_subset_hint_limits_the_choice(director: Director) -> None:
    for _ in range(5):
        stream = RequestStream(director, max_body_bytes=1 << 20)
        stream.handle(headers_message(metadata=_subset_metadata([POD_B])))
        head, *_ = stream.handle(body_message(b'{"model": "m"}', end_of_stream=True))
        assert set_headers(head, "request_headers")["x-gateway-destination-endpoint"] == POD_B
        stream.close()
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message(metadata=_subset_metadata([POD_C])))  # POD_C does not serve m
    (answer,) = stream.handle(body_message(b'{"model": "m"}', end_of_stream=True))
    assert answer.immediate_response.status.code == 503


def test_response_messages_are_acknowledged(director: Director) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message(method="GET", end_of_stream=True))
    (ack,) = stream.handle(ProcessingRequest(response_headers=HttpHeaders()))
    assert ack.WhichOneof("response") == "response_headers"
    (ack,) = stream.handle(ProcessingRequest(response_trailers=HttpTrailers()))
    assert ack.WhichOneof("response") == "response_trailers"


def _body_mode_count(mode: str) -> float:
    value = metrics.REGISTRY.get_sample_value("epp_extproc_request_body_mode_total", {"mode": mode})
    return value or 0.0


@pytest.mark.parametrize(
    ("body_mode", "label"),
    [(FULL_DUPLEX, "FULL_DUPLEX_STREAMED"), (BUFFERED, "BUFFERED"), (99, "unknown")],
    ids=["full-duplex", "buffered", "unknown-number"],
)
def test_each_request_with_a_body_counts_the_mode_envoy_sent_it_in(
    director: Director, body_mode: int, label: str
) -> None:
    before = {
        mode: _body_mode_count(mode) for mode in ("FULL_DUPLEX_STREAMED", "BUFFERED", "unknown")
    }
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message(body_mode=body_mode))
    stream.handle(body_message(b'{"model": "m", "prompt": "p"}', end_of_stream=True))
    stream.close()
    bodiless = RequestStream(director, max_body_bytes=1 << 20)
    bodiless.handle(headers_message(method="GET", path="/health", end_of_stream=True))
    bodiless.close()
    after = {mode: _body_mode_count(mode) for mode in before}
    # Once, under its own mode only (a number the protocol does not define adds no
    # series of its own); a request without a body is not counted.
    assert {mode: after[mode] - before[mode] for mode in before} == {
        mode: 1.0 if mode == label else 0.0 for mode in before
    }
