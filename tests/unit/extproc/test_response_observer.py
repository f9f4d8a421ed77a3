"""Response bodies seen through the observing filter's stream, matched to the routing
stream by request id; fed Envoy's messages in memory (no gRPC)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    HttpTrailers,
    ProcessingRequest,
)
from google.protobuf.struct_pb2 import Struct

from epp.api.usage import Usage
from epp.director import Director
from epp.extproc.response_observer import ResponseObservers, request_id_of
from epp.observability.request_metrics import FinishedRequest
from tests.unit.extproc.envoy_messages import FULL_DUPLEX
from tests.unit.extproc.observed_streams import announced, routed

TOKEN = b'data: {"choices":[{"delta":{"content":"t"}}]}\n\n'
USAGE = (
    b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,'
    b'"prompt_tokens_details":{"cached_tokens":4}}}\n\ndata: [DONE]\n\n'
)


def observer_headers(
    request_id: str | None, *, status: int = 200, content_type: str = "text/event-stream"
) -> ProcessingRequest:
    attributes = {}
    if request_id is not None:
        fields = Struct()
        fields.update({"request.id": request_id})
        attributes["envoy.filters.http.ext_proc"] = fields
    pairs = {":status": str(status), "content-type": content_type}
    return ProcessingRequest(
        response_headers=HttpHeaders(
            headers=HeaderMap(
                headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
            )
        ),
        attributes=attributes,
        observability_mode=True,
    )


def chunks(*parts: bytes, end: bool = True) -> list[ProcessingRequest]:
    return [
        ProcessingRequest(
            response_body=HttpBody(body=part, end_of_stream=end and i == len(parts) - 1),
            observability_mode=True,
        )
        for i, part in enumerate(parts)
    ]


async def _aiter(messages: Iterable[ProcessingRequest]) -> AsyncIterator[ProcessingRequest]:
    for message in messages:
        yield message


def observe(
    observers: ResponseObservers, first: ProcessingRequest, rest: Iterable[ProcessingRequest] = ()
) -> None:
    asyncio.run(observers.observe(first, _aiter(rest)))


def test_request_id_is_read_from_the_attributes() -> None:
    assert request_id_of(observer_headers("abc")) == "abc"
    assert request_id_of(observer_headers(None)) == ""


def test_observed_body_gives_ttft_size_usage_and_completion(
    director: Director, recorded: list[FinishedRequest]
) -> None:
    observers = ResponseObservers()
    stream = routed(director, observers)
    assert len(observers) == 1
    body = [TOKEN, TOKEN, USAGE]
    observe(observers, observer_headers("req-1"), chunks(*body))
    response = stream.decision.response  # type: ignore[union-attr]
    assert response.first_token_at is not None
    assert response.body_bytes == sum(map(len, body))
    assert response.usage == Usage(7, 3, 4)
    assert response.completed and response.ended_at is not None
    stream.close()
    assert len(observers) == 0  # forgotten with its stream: the map stays bounded
    assert [r.request_id for r in recorded] == ["req-1"]


def test_record_waits_for_an_observed_body_that_ends_after_the_routing_stream(
    director: Director, recorded: list[FinishedRequest]
) -> None:
    observers = ResponseObservers()
    stream = routed(director, observers)
    messages: asyncio.Queue[ProcessingRequest | None] = asyncio.Queue()

    async def feed() -> AsyncIterator[ProcessingRequest]:
        while (message := await messages.get()) is not None:
            yield message

    async def scenario() -> None:
        watching = asyncio.create_task(observers.observe(observer_headers("req-1"), feed()))
        for message in chunks(TOKEN, end=False):
            await messages.put(message)
        await asyncio.sleep(0)
        stream.close()  # Envoy ended the routing stream before the last chunk was read
        assert recorded == []
        for message in chunks(USAGE):
            await messages.put(message)
        await watching

    asyncio.run(scenario())
    (finished,) = recorded
    assert finished.decision is not None
    assert finished.decision.response.usage == Usage(7, 3, 4)


def test_observing_stream_that_breaks_off_still_records(
    director: Director, recorded: list[FinishedRequest]
) -> None:
    observers = ResponseObservers()
    stream = routed(director, observers)

    async def scenario() -> None:
        async def cut() -> AsyncIterator[ProcessingRequest]:
            yield chunks(TOKEN, end=False)[0]
            stream.close()
            raise asyncio.CancelledError  # the observing stream is reset by Envoy

        with pytest.raises(asyncio.CancelledError):
            await observers.observe(observer_headers("req-1"), cut())

    asyncio.run(scenario())
    assert len(recorded) == 1
    assert recorded[0].decision.response.usage is None  # type: ignore[union-attr]


def test_a_request_id_on_two_streams_matches_neither(
    director: Director, recorded: list[FinishedRequest]
) -> None:
    observers = ResponseObservers()
    first, second = routed(director, observers), routed(director, observers)
    observe(observers, observer_headers("req-1"), chunks(TOKEN, USAGE))
    assert observers.unmatched == 1
    for stream in (first, second):
        assert stream.decision.response.usage is None  # type: ignore[union-attr]
        stream.close()
    assert len(observers) == 0 and len(recorded) == 2


@pytest.mark.parametrize(
    "first",
    [
        observer_headers("nobody"),
        observer_headers(None),
        chunks(TOKEN)[0],  # not the response headers: not what the observing filter sends
    ],
)
def test_an_unmatched_observing_stream_is_ignored(
    director: Director, recorded: list[FinishedRequest], first: ProcessingRequest
) -> None:
    observers = ResponseObservers()
    stream = routed(director, observers)
    observe(observers, first, chunks(TOKEN, USAGE))
    assert observers.unmatched == 1
    assert stream.decision.response.first_token_at is None  # type: ignore[union-attr]


def test_errors_and_trailers_carry_no_usage(director: Director) -> None:
    observers = ResponseObservers()
    stream = routed(director, observers)
    observe(
        observers,
        observer_headers("req-1", status=500, content_type="application/json"),
        [
            *chunks(b'{"usage":{"prompt_tokens":1,"completion_tokens":1}}', end=False),
            ProcessingRequest(response_trailers=HttpTrailers(), observability_mode=True),
        ],
    )
    assert stream.decision.response.usage is None  # type: ignore[union-attr]


def test_streams_that_see_the_body_themselves_expect_no_observer(director: Director) -> None:
    observers = ResponseObservers()
    stream = routed(director, observers, response_body_mode=FULL_DUPLEX)
    assert len(observers) == 0
    stream.close()


def test_a_stream_without_a_body_view_counts_a_begun_response_as_completed(
    director: Director, recorded: list[FinishedRequest]
) -> None:
    # response_body_mode NONE with no observing filter: Envoy sends no trailers.
    stream = routed(director, ResponseObservers())
    stream.handle(
        ProcessingRequest(
            response_headers=HttpHeaders(
                headers=HeaderMap(headers=[HeaderValue(key=":status", raw_value=b"200")])
            )
        )
    )
    stream.close()
    assert recorded[0].decision.response.completed  # type: ignore[union-attr]


def test_an_observer_read_after_the_routing_stream_closed_still_counts(
    director: Director, recorded: list[FinishedRequest]
) -> None:
    # A short response: Envoy ends the routing stream right after sending the observing
    # stream's messages, and epp may read the close first.
    observers = announced(linger_s=60.0)

    async def scenario() -> None:
        stream = routed(director, observers)
        stream.handle(
            ProcessingRequest(
                response_headers=HttpHeaders(
                    headers=HeaderMap(headers=[HeaderValue(key=":status", raw_value=b"200")])
                )
            )
        )
        stream.close()
        assert recorded == [] and len(observers) == 1  # waiting for its observer
        await observers.observe(
            observer_headers("req-1", content_type="application/json"),
            _aiter(chunks(b'{"usage":{"prompt_tokens":5,"completion_tokens":2}}')),
        )

    asyncio.run(scenario())
    (finished,) = recorded
    assert finished.decision is not None
    assert finished.decision.response.usage == Usage(5, 2)
    assert len(observers) == 0


def test_a_routing_stream_gives_up_on_an_observer_that_never_comes(
    director: Director, recorded: list[FinishedRequest]
) -> None:
    observers = announced(linger_s=0.0)

    async def scenario() -> None:
        stream = routed(director, observers)
        stream.handle(
            ProcessingRequest(
                response_headers=HttpHeaders(
                    headers=HeaderMap(headers=[HeaderValue(key=":status", raw_value=b"200")])
                )
            )
        )
        stream.close()
        assert recorded == []
        await asyncio.sleep(0.05)  # the 0 s linger timer runs on the next loop turn

    asyncio.run(scenario())
    assert len(recorded) == 1 and len(observers) == 0
    assert recorded[0].decision.response.usage is None  # type: ignore[union-attr]
