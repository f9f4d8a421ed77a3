"""The gRPC service itself, over a real socket: a peer that breaks the ext_proc protocol
gets INVALID_ARGUMENT and a warning, not an INTERNAL error and a traceback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
import pytest_asyncio
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
    ProcessingResponse,
)

from epp.director import Director
from epp.extproc.service import create_grpc_server
from epp.observability import metrics
from epp.requestcontrol.fallback import ModelFallbacks
from tests.unit.directors import POD_A, POD_B, director_over, fresh_store
from tests.unit.extproc.envoy_messages import body_message, headers_message

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


@pytest_asyncio.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    director = director_over(fresh_store({POD_A: {"m"}}))
    server, port = create_grpc_server(director, address="127.0.0.1:0", max_body_bytes=1 << 20)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


async def exchange(channel: grpc.aio.Channel, messages: Sequence[bytes]) -> list[bytes]:
    """Send serialized messages, half-close, and collect the serialized answers."""
    call = channel.stream_stream(METHOD, request_serializer=None, response_deserializer=None)

    async def requests() -> AsyncIterator[bytes]:
        for message in messages:
            yield message

    return [answer async for answer in call(requests(), timeout=30)]


def stream_errors(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value("epp_extproc_stream_errors_total", {"reason": reason})
    return value or 0.0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "messages",
    [
        [b"\xff\xff\xff\xff not a protobuf"],
        [headers_message().SerializeToString(), headers_message().SerializeToString()],
        [body_message(b"{}", end_of_stream=True).SerializeToString()],
        [ProcessingRequest().SerializeToString()],
    ],
    ids=["garbage", "headers-twice", "body-first", "no-kind"],
)
async def test_a_broken_stream_is_invalid_argument_not_an_epp_error(
    channel: grpc.aio.Channel,
    messages: list[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    protocol, exception = stream_errors("protocol"), stream_errors("exception")
    with caplog.at_level(logging.WARNING, logger="epp"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await exchange(channel, messages)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert stream_errors("protocol") == protocol + 1
    assert stream_errors("exception") == exception
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]

    # The next stream, well formed, is routed.
    answers = await exchange(
        channel,
        [
            headers_message().SerializeToString(),
            body_message(b'{"model": "m", "prompt": "p"}', end_of_stream=True).SerializeToString(),
        ],
    )
    head = ProcessingResponse.FromString(answers[0])
    mutation = head.request_headers.response.header_mutation.set_headers
    assert {h.header.key: h.header.raw_value for h in mutation}[
        "x-gateway-destination-endpoint"
    ] == POD_A.encode()


@pytest.mark.asyncio
async def test_a_flood_of_broken_streams_is_logged_once_with_a_count(
    channel: grpc.aio.Channel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="epp"):
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError):
                await exchange(channel, [b"\x00garbage"])
    warnings = [r for r in caplog.records if "broke the protocol" in r.getMessage()]
    assert len(warnings) == 1  # the first; the rest wait for the interval to pass


@pytest.mark.asyncio
async def test_bytes_that_are_no_access_log_message_are_invalid_argument(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    call = channel.stream_unary(
        "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs",
        request_serializer=None,
        response_deserializer=None,
    )

    async def garbage() -> AsyncIterator[bytes]:
        yield b"\xff\xff\xff\xff not a protobuf"

    protocol, exception = stream_errors("protocol"), stream_errors("exception")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(garbage(), timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert stream_errors("protocol") == protocol + 1
    assert stream_errors("exception") == exception
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]

    async def empty_batch() -> AsyncIterator[bytes]:
        yield b""  # a message with no entries: read, nothing to hand on

    assert await call(empty_batch(), timeout=30) == b""


@pytest.mark.asyncio
async def test_a_message_over_the_configured_limit_is_refused() -> None:
    store = fresh_store({POD_A: ["m"]})
    server, port = create_grpc_server(
        director_over(store),
        address="127.0.0.1:0",
        max_body_bytes=1 << 20,
        max_receive_message_bytes=64 * 1024,
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            big = body_message(b"x" * (100 * 1024), end_of_stream=True).SerializeToString()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await exchange(channel, [headers_message().SerializeToString(), big])
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            small = body_message(b"{}", end_of_stream=True).SerializeToString()
            answers = await exchange(channel, [headers_message().SerializeToString(), small])
            assert answers  # under the limit: answered (an error for this body, but answered)
    finally:
        await server.stop(None)


async def routed(
    body: bytes,
    metadata: tuple[tuple[str, str], ...],
    director: Director | None = None,
    **server_options: Any,
) -> list[ProcessingResponse]:
    """One chat request (headers, then ``body``) through a fresh epp (by default over
    POD_A), its routing stream opened with gRPC ``metadata``: epp's answers."""
    director = director or director_over(fresh_store({POD_A: {"m"}}))
    server, port = create_grpc_server(
        director, address="127.0.0.1:0", max_body_bytes=1 << 20, **server_options
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream(
                METHOD,
                request_serializer=ProcessingRequest.SerializeToString,
                response_deserializer=ProcessingResponse.FromString,
            )

            async def requests() -> AsyncIterator[ProcessingRequest]:
                yield headers_message()
                yield body_message(body, end_of_stream=True)

            return [a async for a in call(requests(), timeout=30, metadata=metadata)]
    finally:
        await server.stop(None)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("readings", "servers_add_usage", "told"),
    [
        ("logged", False, True),
        ("logged", True, False),  # the servers add usage unasked: the meter must read it
        ("timed", False, False),  # no Lua meter to tell
        (None, False, False),  # a gateway's Envoy: no meter either
    ],
)
async def test_the_lua_meter_is_told_to_skip_streams_without_usage_only_in_logged_mode(
    readings: str | None, servers_add_usage: bool, told: bool
) -> None:
    """``x-epp-response-readings: logged`` (LOGGED mode's routing filter) says Envoy's Lua
    meter reads bodies: a stream that did not ask for usage carries none, and its routing
    answer tells the meter so, unless ``--servers-add-stream-usage``."""
    metadata = () if readings is None else (("x-epp-response-readings", readings),)
    body = b'{"model": "m", "prompt": "hi", "stream": true}'
    answers = await routed(body, metadata, servers_add_stream_usage=servers_add_usage)
    (routing,) = [a for a in answers if a.WhichOneof("response") == "request_headers"]
    assert routing.dynamic_metadata["envoy.lb"]["x-gateway-destination-endpoint"] == POD_A
    assert ("epp.response" in routing.dynamic_metadata) is told


@pytest.mark.asyncio
@pytest.mark.parametrize(("skipped", "told"), [("skipped", True), (None, False), ("sent", False)])
async def test_headers_for_the_client_ride_on_the_routing_answer_where_envoy_skips_them(
    skipped: str | None, told: bool
) -> None:
    """``x-epp-response-headers: skipped`` (LOGGED and TIMED as `epp envoy-config` prints
    them) says no response headers will come on this stream: epp's headers for the
    client go to Envoy's Lua script in the routing answer's metadata."""
    store = fresh_store({POD_A: {"big"}, POD_B: {"small"}})
    big = store.get(POD_A)
    assert big is not None
    big.scrape_failures = 99  # not ready: "big" falls back to "small"
    director = director_over(store, fallbacks=ModelFallbacks({"big": ["small"]}))
    metadata = () if skipped is None else (("x-epp-response-headers", skipped),)
    answers = await routed(b'{"model": "big", "prompt": "hi"}', metadata, director)
    (routing,) = [a for a in answers if a.WhichOneof("response") == "request_headers"]
    assert routing.dynamic_metadata["envoy.lb"]["x-gateway-destination-endpoint"] == POD_B
    if told:
        wanted = routing.dynamic_metadata["epp.response"]["response_headers"]
        assert dict(wanted) == {"x-gateway-model-fallback": "big -> small"}
    else:
        assert "epp.response" not in routing.dynamic_metadata


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("advertised", "pieces"),
    [
        (None, 7),  # a gateway's Envoy: the reference's 62,000-byte chunks
        ("1048576", 1),  # epp envoy-config's bootstrap: one message back
        ("250000", 2),
        ("10", 7),  # never below the reference's bound
        ("9" * 10, 1),  # never above what gRPC may send (a 5 MiB ceiling here): one
        ("99999999999", 7),  # too long to be a size: ignored
        ("1e6", 7),
        ("-5", 7),
    ],
)
async def test_a_large_body_goes_back_in_chunks_as_large_as_envoy_says(
    advertised: str | None, pieces: int
) -> None:
    body = b'{"model": "m", "prompt": "' + b"x" * 400_000 + b'"}'
    metadata = () if advertised is None else (("x-epp-body-chunk-bytes", advertised),)
    answers = await routed(body, metadata, max_send_message_bytes=5 << 20)
    chunks = [
        a.request_body.response.body_mutation.streamed_response
        for a in answers
        if a.WhichOneof("response") == "request_body"
    ]
    assert len(chunks) == pieces
    assert b"".join(c.body for c in chunks) == body
    assert [c.end_of_stream for c in chunks] == [False] * (pieces - 1) + [True]
