"""What a client (or a peer that is not Envoy) can send that epp must answer cleanly:
undecodable headers, routing headers it must not control, messages out of order, and
more body bytes than epp will hold."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    HttpTrailers,
    ProcessingRequest,
    ProcessingResponse,
    ProtocolConfiguration,
)

from epp.datalayer.store import EndpointStore
from epp.director import Director
from epp.extproc.body_budget import BodyBudget
from epp.extproc.messages import DESTINATION_HEADER, MODEL_HEADER
from epp.extproc.stream import Phase, ProtocolViolation, RequestStream
from epp.requestcontrol.objectives import OBJECTIVE_HEADERS
from epp.requestcontrol.rewrite import MODEL_REWRITE_HEADER, MODEL_REWRITE_HEADERS
from tests.unit.directors import POD_A, POD_B, POD_C, director_over, fresh_store
from tests.unit.extproc.envoy_messages import (
    BUFFERED,
    FULL_DUPLEX,
    body_message,
    headers_message,
    set_headers,
    streamed_body,
)

BODY = b'{"model": "m", "prompt": "hello"}'


@pytest.fixture
def store() -> EndpointStore:
    """POD_A and POD_B serve "m", POD_C another model."""
    return fresh_store({POD_A: {"m"}, POD_B: {"m"}, POD_C: {"other"}})


def error_code(responses: Iterable[ProcessingResponse]) -> tuple[int, str]:
    (answer,) = responses
    immediate = answer.immediate_response
    return immediate.status.code, orjson.loads(immediate.body)["error"]["code"]


def removed_headers(response: ProcessingResponse, which: str) -> list[str]:
    return list(getattr(response, which).response.header_mutation.remove_headers)


# -- headers -----------------------------------------------------------------------------


def test_a_header_that_is_not_utf8_does_not_stop_the_request(director: Director) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    assert stream.handle(headers_message(extra={"x-a": b"\xff\xfe caf\xe9"})) == ()
    head, *_ = stream.handle(body_message(BODY, end_of_stream=True))
    assert set_headers(head, "request_headers")[DESTINATION_HEADER] in (POD_A, POD_B)
    assert stream.headers["x-a"] == "\ufffd\ufffd caf\ufffd"  # read for logs only
    stream.close()


@pytest.mark.parametrize("header", [*MODEL_REWRITE_HEADERS, *OBJECTIVE_HEADERS])
def test_a_routing_header_that_is_not_utf8_is_refused(director: Director, header: str) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    assert error_code(stream.handle(headers_message(extra={header: b"m\xff"}))) == (
        400,
        "invalid_header",
    )
    assert stream.phase is Phase.ANSWERED
    assert stream.handle(body_message(BODY, end_of_stream=True)) == ()  # crossed the answer
    stream.close()


def test_a_client_model_header_is_removed_from_a_request_without_body(director: Director) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    (answer,) = stream.handle(
        headers_message(
            method="GET", path="/health", end_of_stream=True, extra={MODEL_HEADER: "evil"}
        )
    )
    assert MODEL_HEADER not in set_headers(answer, "request_headers")
    assert removed_headers(answer, "request_headers") == [MODEL_HEADER]
    stream.close()


def test_body_based_routing_removes_a_client_destination(store: EndpointStore) -> None:
    stream = RequestStream(director_over(store, pick_endpoints=False), max_body_bytes=1 << 20)
    stream.handle(headers_message(extra={DESTINATION_HEADER: "6.6.6.6:80"}))
    head, *_ = stream.handle(body_message(BODY, end_of_stream=True))
    assert set_headers(head, "request_headers") == {MODEL_HEADER: "m"}
    assert removed_headers(head, "request_headers") == [DESTINATION_HEADER]


def test_a_routed_request_keeps_nothing_to_remove(director: Director) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message())
    head, *_ = stream.handle(body_message(BODY, end_of_stream=True))
    assert removed_headers(head, "request_headers") == []  # both set, overwriting copies
    stream.close()


def test_the_rewrite_header_is_ignored_unless_trusted(director: Director) -> None:
    def routed_model(trusted: bool) -> bytes:
        director.rewrites.honour_header = trusted
        stream = RequestStream(director, max_body_bytes=1 << 20)
        stream.handle(headers_message(extra={MODEL_REWRITE_HEADER: "other"}))
        _, *chunks = stream.handle(body_message(BODY, end_of_stream=True))
        stream.close()
        return streamed_body(chunks)

    assert orjson.loads(routed_model(trusted=False))["model"] == "m"
    assert orjson.loads(routed_model(trusted=True))["model"] == "other"


# -- bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks", [[b""], [b"", b""], [b"  \r\n"]], ids=["empty", "two-empty", "blank"]
)
def test_an_empty_body_is_a_missing_body(director: Director, chunks: list[bytes]) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message())
    for chunk in chunks[:-1]:
        assert stream.handle(body_message(chunk, end_of_stream=False)) == ()
    assert error_code(stream.handle(body_message(chunks[-1], end_of_stream=True))) == (
        400,
        "missing_body",
    )


def test_a_model_name_envoy_would_refuse_is_a_bad_request(director: Director) -> None:
    for model in ("m\r\nx-injected: 1", "m\x00", "m" * 70_000):
        stream = RequestStream(director, max_body_bytes=1 << 20)
        stream.handle(headers_message())
        body = orjson.dumps({"model": model, "prompt": "p"})
        assert error_code(stream.handle(body_message(body, end_of_stream=True))) == (
            400,
            "invalid_model",
        )


def test_the_prompt_kept_for_routing_is_cut_where_scheduling_stops_reading(
    director: Director,
) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 22)
    stream.handle(headers_message())
    body = orjson.dumps({"model": "m", "prompt": "x" * 1_000_000})
    list(stream.handle(body_message(body, end_of_stream=True)))
    assert stream.decision is not None
    assert len(stream.decision.request.prompt) == director.scheduler.prompt_chars < 100_000
    stream.close()


# -- the body budget ---------------------------------------------------------------------


def test_a_body_that_does_not_fit_the_budget_gets_503_and_others_go_on(
    director: Director,
) -> None:
    budget = BodyBudget(200_000)
    first = RequestStream(director, max_body_bytes=1 << 20, body_budget=budget)
    second = RequestStream(director, max_body_bytes=1 << 20, body_budget=budget)
    first.handle(headers_message())
    second.handle(headers_message())
    opening = b'{"model": "m", "prompt": "' + b"a" * 150_000
    assert first.handle(body_message(opening, end_of_stream=False)) == ()
    status, code = error_code(second.handle(body_message(b"b" * 60_000, end_of_stream=False)))
    assert (status, code) == (503, "overloaded")
    assert budget.held_bytes == len(opening) and budget.refused == 1
    responses = iter(first.handle(body_message(b'"}', end_of_stream=True)))
    head = next(responses)
    # A body too large for one message is held until its last chunk has gone to Envoy.
    assert budget.held_bytes == len(opening) + 2
    assert set_headers(head, "request_headers")[DESTINATION_HEADER] in (POD_A, POD_B)
    assert len(streamed_body(responses)) == len(opening) + 2
    assert budget.held_bytes == 0
    first.close()
    second.close()
    assert budget.held_bytes == 0


def test_a_small_body_gives_its_bytes_back_once_routed(director: Director) -> None:
    budget = BodyBudget(1 << 20)
    stream = RequestStream(director, max_body_bytes=1 << 20, body_budget=budget)
    stream.handle(headers_message())
    stream.handle(body_message(BODY[:10], end_of_stream=False))
    assert budget.held_bytes == 10
    _, chunk = stream.handle(body_message(BODY[10:], end_of_stream=True))
    assert budget.held_bytes == 0  # its one chunk is already in the answer
    assert chunk.request_body.response.body_mutation.streamed_response.body == BODY
    stream.close()


def test_a_stream_that_ends_while_gathering_gives_its_bytes_back(director: Director) -> None:
    budget = BodyBudget(1 << 20)
    stream = RequestStream(director, max_body_bytes=1 << 20, body_budget=budget)
    stream.handle(headers_message())
    stream.handle(body_message(b"x" * 5000, end_of_stream=False))
    assert budget.held_bytes == 5000
    stream.close()  # the client went away
    assert budget.held_bytes == 0


def test_a_routed_body_never_sent_back_is_released_at_close(director: Director) -> None:
    budget = BodyBudget(1 << 20)
    stream = RequestStream(director, max_body_bytes=1 << 20, body_budget=budget)
    stream.handle(headers_message())
    body = b'{"model": "m", "prompt": "' + b"x" * 100_000 + b'"}'
    responses = iter(stream.handle(body_message(body, end_of_stream=True)))
    next(responses)  # the stream was cut after the routing answer
    assert budget.held_bytes == len(body)
    stream.close()
    assert budget.held_bytes == 0


def test_buffered_mode_releases_the_body_once_answered(director: Director) -> None:
    budget = BodyBudget(1 << 20)
    stream = RequestStream(director, max_body_bytes=1 << 20, body_budget=budget)
    stream.handle(headers_message(body_mode=BUFFERED))
    (answer,) = stream.handle(body_message(BODY, end_of_stream=True))
    assert set_headers(answer, "request_body")[DESTINATION_HEADER] in (POD_A, POD_B)
    assert budget.held_bytes == 0
    stream.close()


@pytest.mark.parametrize("count", [1, 2, 3, 16, 17, 43, 500])
def test_a_body_in_many_chunks_reaches_envoy_whole(director: Director, count: int) -> None:
    """However many chunks: kept apart and joined once, or (past 16) gathered in one
    bytearray as they come."""
    stream = RequestStream(director, max_body_bytes=1 << 22)
    stream.handle(headers_message())
    body = orjson.dumps({"model": "m", "prompt": "z" * 300_000})
    size = -(-len(body) // count)
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    assert len(pieces) == count
    for piece in pieces[:-1]:
        assert stream.handle(body_message(piece, end_of_stream=False)) == ()
    _, *chunks = stream.handle(body_message(pieces[-1], end_of_stream=True))
    assert streamed_body(chunks) == body
    stream.close()


def test_a_large_body_in_few_chunks_is_gathered_as_it_comes(director: Director) -> None:
    """Past 1 MiB the chunks go into one bytearray as they arrive: joining many large
    chunks at the end would hold the body twice at once."""
    stream = RequestStream(director, max_body_bytes=1 << 23)
    stream.handle(headers_message())
    body = orjson.dumps({"model": "m", "prompt": "z" * 3_000_000})
    pieces = [body[i : i + 1_000_000] for i in range(0, len(body), 1_000_000)]
    assert stream.handle(body_message(pieces[0], end_of_stream=False)) == ()
    assert stream._gathered is None  # one chunk under the bound: kept as it came
    assert stream.handle(body_message(pieces[1], end_of_stream=False)) == ()
    assert stream._gathered is not None and stream._pieces == []
    for piece in pieces[2:-1]:
        assert stream.handle(body_message(piece, end_of_stream=False)) == ()
    _, *chunks = stream.handle(body_message(pieces[-1], end_of_stream=True))
    assert streamed_body(chunks) == body
    stream.close()


# -- the protocol ------------------------------------------------------------------------


def routed(director: Director) -> RequestStream:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message())
    list(stream.handle(body_message(BODY, end_of_stream=True)))
    return stream


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("fresh", body_message(BODY, end_of_stream=True)),
        ("fresh", ProcessingRequest(request_trailers=HttpTrailers())),
        ("fresh", ProcessingRequest()),
        ("gathering", headers_message()),
        ("routed", headers_message()),
        ("routed", body_message(b"more", end_of_stream=True)),
        ("routed", ProcessingRequest()),
    ],
    ids=[
        "body-first",
        "trailers-first",
        "no-kind-first",
        "headers-twice",
        "headers-after-routing",
        "body-after-routing",
        "no-kind-after-routing",
    ],
)
def test_messages_out_of_place_fail_the_stream(
    director: Director, setup: str, message: ProcessingRequest
) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    if setup == "gathering":
        stream.handle(headers_message())
        stream.handle(body_message(b'{"model"', end_of_stream=False))
    elif setup == "routed":
        stream = routed(director)
    with pytest.raises(ProtocolViolation):
        list(stream.handle(message))
    stream.close()  # and the stream still closes cleanly, releasing what it held
    assert all(ep.inflight_requests == 0 for ep in director._store.all())


@pytest.mark.parametrize("setup", ["fresh", "gathering"])
@pytest.mark.parametrize("response_mode", [FULL_DUPLEX, ProcessingMode.NONE])
def test_envoys_own_answer_before_routing_passes_through(
    director: Director, setup: str, response_mode: int
) -> None:
    """A 408 for a request too slow to arrive (or a 400/431 for bad headers) is a local
    reply of Envoy's, sent through ext_proc before epp has routed anything."""
    config = ProtocolConfiguration(request_body_mode=FULL_DUPLEX, response_body_mode=response_mode)
    stream = RequestStream(director, max_body_bytes=1 << 20)
    first = ProcessingRequest(
        response_headers=HttpHeaders(
            headers=HeaderMap(headers=[HeaderValue(key=":status", raw_value=b"408")])
        ),
        protocol_config=config,
    )
    if setup == "gathering":  # the modes came on the request headers
        stream.handle(headers_message(response_body_mode=response_mode))
        stream.handle(body_message(b'{"model"', end_of_stream=False))
        first.ClearField("protocol_config")
    (ack,) = stream.handle(first)
    assert ack.WhichOneof("response") == "response_headers"
    assert not ack.response_headers.response.HasField("header_mutation")
    (body,) = stream.handle(
        ProcessingRequest(response_body=HttpBody(body=b"request timeout", end_of_stream=True))
    )
    streamed = body.response_body.response.body_mutation.streamed_response
    if response_mode == FULL_DUPLEX:  # the body must be handed back, unchanged
        assert (streamed.body, streamed.end_of_stream) == (b"request timeout", True)
    else:
        assert not body.response_body.response.HasField("body_mutation")
    stream.close()


def response_headers(status: bytes = b"200", *, end: bool = False) -> ProcessingRequest:
    return ProcessingRequest(
        response_headers=HttpHeaders(
            headers=HeaderMap(headers=[HeaderValue(key=":status", raw_value=status)]),
            end_of_stream=end,
        )
    )


def response_body(data: bytes, *, end: bool) -> ProcessingRequest:
    return ProcessingRequest(response_body=HttpBody(body=data, end_of_stream=end))


@pytest.mark.parametrize(
    "after",
    [
        [response_headers(), response_headers()],
        [response_headers(end=True), response_body(b"x", end=False)],
        [response_headers(), response_body(b"x", end=True), response_body(b"y", end=False)],
        [
            response_headers(),
            ProcessingRequest(response_trailers=HttpTrailers()),
            response_body(b"late", end=False),
        ],
        [response_headers(), ProcessingRequest(request_trailers=HttpTrailers())],
        [response_headers(), headers_message()],
    ],
    ids=[
        "headers-twice",
        "body-after-headers-ended",
        "body-after-body-ended",
        "body-after-trailers",
        "request-trailers-after-response",
        "request-after-response",
    ],
)
def test_response_messages_out_of_place_fail_the_stream(
    director: Director, after: list[ProcessingRequest]
) -> None:
    stream = routed(director)
    *fine, bad = after
    for message in fine:
        assert len(list(stream.handle(message))) == 1
    with pytest.raises(ProtocolViolation):
        list(stream.handle(bad))
    stream.close()


def test_nothing_is_answered_after_epps_own_answer(director: Director) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message())
    assert error_code(stream.handle(body_message(b"{", end_of_stream=True)))[0] == 400
    for message in (
        response_headers(),
        response_body(b"x", end=True),
        ProcessingRequest(response_trailers=HttpTrailers()),
        ProcessingRequest(request_trailers=HttpTrailers()),
        ProcessingRequest(),
    ):
        assert list(stream.handle(message)) == []
    stream.close()


def test_a_local_reply_ends_what_the_request_may_still_send(director: Director) -> None:
    stream = RequestStream(director, max_body_bytes=1 << 20)
    stream.handle(headers_message())
    stream.handle(body_message(b'{"model": "m"', end_of_stream=False))
    assert len(list(stream.handle(response_headers(b"408")))) == 1
    # Chunks already on their way when Envoy answered are dropped, not routed.
    assert list(stream.handle(body_message(b"}", end_of_stream=True))) == []
    assert stream.decision is None
    stream.close()


@pytest.mark.parametrize("status", [b"9" * 5000, b"20", b"2000", b"abc", "٢٠٠".encode()])
def test_a_status_that_is_not_three_digits_is_unknown(director: Director, status: bytes) -> None:
    stream = routed(director)
    assert len(list(stream.handle(response_headers(status)))) == 1
    assert stream.decision is not None and stream.decision.response.status is None
    stream.close()


def test_trailers_after_the_body_ended_are_answered(director: Director) -> None:
    """Answering them costs nothing; failing the stream there would cut a response the
    client has already received whole."""
    stream = routed(director)
    stream.handle(response_headers())
    list(stream.handle(response_body(b"data: [DONE]\n\n", end=True)))
    (answer,) = stream.handle(ProcessingRequest(response_trailers=HttpTrailers()))
    assert answer.WhichOneof("response") == "response_trailers"
    stream.close()
