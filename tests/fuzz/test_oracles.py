"""The fuzz suite's judges on hand-made cases: each property can fail, and a correct
exchange passes (no processes; runs in milliseconds)."""

from __future__ import annotations

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)

from epp.errors import BadRequest
from epp.extproc.messages import error_response, local_response
from tests.fuzz.bodies import judge_body
from tests.fuzz.extproc_client import StreamResult
from tests.fuzz.extproc_oracle import check_stream
from tests.fuzz.extproc_strategies import StreamCase
from tests.fuzz.harness import GEMMA, GHOST, QWEN, Pool
from tests.fuzz.http_oracle import HttpResult, check_http, parse_responses
from tests.fuzz.http_strategies import HttpCase
from tests.fuzz.tally import problem_class

POOL = Pool({"10.0.0.1:8000": QWEN, "10.0.0.2:8000": GEMMA}, {"10.0.0.3:8000": GHOST})
BODY = b'{"model": "qwen2-1-5b", "prompt": "hi"}'


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"", "empty"),
        (b" \n", "blank"),
        (b"{", "invalid"),
        (b"\xff{}", "invalid"),
        (b'{"model": NaN}', "invalid"),
        (b"[1]", "not_object"),
        (b'{"prompt": "x"}', "no_model"),
        (b'{"model": 3}', "bad_model"),
        (BODY, "model"),
        (b'{"model": "a", "model": "b"}', "edge"),
        (b'{"model": "a", "x": 99999999999999999999999}', "edge"),
        (b"\xef\xbb\xbf{}", "edge"),
        (b"[" * 1000 + b"]" * 1000, "edge"),
    ],
    ids=lambda value: value[:20] if isinstance(value, bytes) else value,
)
def test_judge_body(body: bytes, kind: str) -> None:
    assert judge_body(body).kind == kind


def test_parse_responses_reads_chunked_and_length_bodies() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\nno"
    )
    first, second = parse_responses(data, head_request=False, closed=True)
    assert (first.status, first.body, first.complete) == (200, b"abc", True)
    assert (second.status, second.body, second.complete) == (400, b"no", True)


def _http(raw: bytes, case: HttpCase) -> list[str]:
    result = HttpResult(case, parse_responses(raw, head_request=False, closed=True), True, raw=raw)
    return check_http(result, POOL)


STRICT = HttpCase(b"POST / HTTP/1.1\r\n\r\n", "strict", "POST", BODY)


def test_an_empty_500_breaks_a_property_whatever_the_request() -> None:
    raw = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
    for framing in ("strict", "malformed"):
        case = HttpCase(STRICT.data, framing, "POST", BODY)
        assert "empty_500" in {problem_class(p) for p in _http(raw, case)}


def test_a_plain_error_to_a_well_formed_request_is_not_epps() -> None:
    raw = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nno up"
    assert _http(raw, STRICT)
    assert not _http(raw, HttpCase(STRICT.data, "malformed", "POST", BODY))


def test_a_valid_request_must_reach_a_pod_serving_its_model() -> None:
    valid = HttpCase(STRICT.data, "strict", "POST", BODY, valid_model=QWEN)
    by_gemma = b"HTTP/1.1 200 OK\r\nx-sim-pod: 10.0.0.2:8000\r\ncontent-length: 2\r\n\r\n{}"
    by_qwen = by_gemma.replace(b"10.0.0.2", b"10.0.0.1")
    assert _http(by_gemma, valid)
    assert not _http(by_qwen, valid)


def _headers(pairs: dict[str, bytes], *, eos: bool = False) -> ProcessingRequest:
    return ProcessingRequest(
        request_headers=HttpHeaders(
            headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v) for k, v in pairs.items()]),
            end_of_stream=eos,
        )
    )


def _routing(destination: str) -> bytes:
    response = ProcessingResponse()
    option = response.request_headers.response.header_mutation.set_headers.add()
    option.header.key = "x-gateway-destination-endpoint"
    option.header.raw_value = destination.encode()
    return bytes(response.SerializeToString())


def _echo(body: bytes) -> bytes:
    response = ProcessingResponse()
    streamed = response.request_body.response.body_mutation.streamed_response
    streamed.body, streamed.end_of_stream = body, True
    return bytes(response.SerializeToString())


REQUEST = (
    _headers({":method": b"POST"}),
    ProcessingRequest(request_body=HttpBody(body=BODY, end_of_stream=True)),
)


def _stream(
    messages: tuple[ProcessingRequest, ...], responses: list[bytes], code: grpc.StatusCode
) -> list[str]:
    return check_stream(StreamResult(StreamCase(messages), responses, code), POOL)


def test_a_correct_full_duplex_exchange_passes() -> None:
    assert _stream(REQUEST, [_routing("10.0.0.1:8000"), _echo(BODY)], grpc.StatusCode.OK) == []


@pytest.mark.parametrize(
    ("responses", "code", "broken"),
    [
        ([_routing("10.0.0.1:8000"), _echo(BODY)], grpc.StatusCode.INTERNAL, "internal_status"),
        ([_routing("10.0.0.9:8000"), _echo(BODY)], grpc.StatusCode.OK, "destination_outside_pool"),
        ([_routing("10.0.0.2:8000"), _echo(BODY)], grpc.StatusCode.OK, "wrong_answer"),
        ([_routing("10.0.0.1:8000"), _echo(b"{}")], grpc.StatusCode.OK, "wrong_answer"),
        ([], grpc.StatusCode.OK, "wrong_answer"),
    ],
    ids=["internal", "outside-pool", "wrong-model", "body-changed", "no-answer"],
)
def test_a_broken_exchange_is_caught(
    responses: list[bytes], code: grpc.StatusCode, broken: str
) -> None:
    assert broken in {problem_class(p) for p in _stream(REQUEST, responses, code)}


def test_headers_twice_must_fail_the_stream() -> None:
    twice = (REQUEST[0], REQUEST[0], REQUEST[1])
    problems = _stream(twice, [], grpc.StatusCode.OK)
    assert {problem_class(p) for p in problems} == {"protocol_not_enforced"}
    assert _stream(twice, [], grpc.StatusCode.INVALID_ARGUMENT) == []


@pytest.mark.parametrize(
    "header",
    [
        "x-llm-d-inference-objective",
        "x-gateway-inference-objective",
        "x-llm-d-model-name-rewrite",
        "x-gateway-model-name-rewrite",
    ],
)
def test_a_steering_header_that_is_not_utf8_may_be_refused(header: str) -> None:
    # Found by the fuzz suite when epp learnt the x-llm-d-* names and the oracle had not.
    request = (
        _headers({":method": b"POST", ":path": b"/v1/chat/completions", header: b"\x80"}, eos=True),
    )
    refused = error_response(BadRequest("header is not valid UTF-8", code="invalid_header"))
    assert _stream(request, [refused.SerializeToString()], grpc.StatusCode.OK) == []


MODELS_REQUEST = (_headers({":method": b"GET", ":path": b"/v1/models"}, eos=True),)


def _local(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    return bytes(local_response(status, body, content_type).SerializeToString())


def test_epps_own_model_list_passes() -> None:
    listed = b'{"object":"list","data":[{"id":"qwen2-1-5b","object":"model"}]}'
    assert _stream(MODELS_REQUEST, [_local(200, listed)], grpc.StatusCode.OK) == []
    one = (_headers({":method": b"GET", ":path": b"/v1/models/qwen2-1-5b"}, eos=True),)
    model = b'{"id":"qwen2-1-5b","object":"model","created":1,"owned_by":"epp"}'
    assert _stream(one, [_local(200, model)], grpc.StatusCode.OK) == []


@pytest.mark.parametrize(
    "responses",
    [
        [_local(200, b"hello")],
        [_local(200, b'{"object":"list","data":[{"id":3}]}')],
        [_local(200, b'{"object":"list","data":[]}', "text/plain")],
        [_routing("10.0.0.1:8000")],  # epp answers the list itself
    ],
    ids=["not-json", "bad-model", "content-type", "routed"],
)
def test_a_wrong_model_list_is_caught(responses: list[bytes]) -> None:
    assert _stream(MODELS_REQUEST, responses, grpc.StatusCode.OK) != []
