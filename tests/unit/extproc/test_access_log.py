"""LOGGED mode: Envoy's access log entries read into a LoggedResponse, and handed to the
routing stream that waits for them (in memory, no gRPC)."""

from __future__ import annotations

import asyncio
import time

import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue, Metadata
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry, ResponseFlags
from envoy.service.accesslog.v3.als_pb2 import StreamAccessLogsMessage
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpHeaders, ProcessingRequest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from epp.api.usage import Usage
from epp.director import Director
from epp.envoy_response_meter import (
    FIRST_BODY_US_TAG,
    FIRST_TOKEN_MS_KEY,
    METADATA_NAMESPACE,
    USAGE_KEY,
)
from epp.extproc.access_log import logged_response as read_entry
from epp.extproc.lenient_access_log import LenientAccessLogs
from epp.extproc.response_observer import LoggedResponse, ResponseObservers
from epp.observability.metrics import REGISTRY
from epp.observability.request_metrics import FinishedRequest
from tests.unit.extproc.observed_streams import announced, routed

STARTED_MS = 1_800_000_000_123


def entry(
    *,
    first_token_ms: float | None = STARTED_MS + 250,
    usage: str | None = '"usage":{"prompt_tokens":7,"completion_tokens":3}}',
    ended_s: float | None = 1.5,
    flags: ResponseFlags | None = None,
    body_bytes: int = 900,
) -> HTTPAccessLogEntry:
    log = HTTPAccessLogEntry()
    log.request.request_id = "req-1"
    log.response.response_body_bytes = body_bytes
    common = log.common_properties
    common.start_time.CopyFrom(Timestamp(seconds=STARTED_MS // 1000, nanos=123_000_000))
    if ended_s is not None:
        common.time_to_last_downstream_tx_byte.CopyFrom(Duration(nanos=int(ended_s * 1e9)))
    readings = Struct()
    if first_token_ms is not None:
        readings.update({FIRST_TOKEN_MS_KEY: first_token_ms})
    if usage is not None:
        readings.update({USAGE_KEY: usage})
    common.metadata.CopyFrom(Metadata(filter_metadata={METADATA_NAMESPACE: readings}))
    if flags is not None:
        common.response_flags.CopyFrom(flags)
    return log


def wire(*entries: HTTPAccessLogEntry) -> bytes:
    message = StreamAccessLogsMessage()
    message.http_logs.log_entry.extend(entries)
    return message.SerializeToString()


def logged_response(log: HTTPAccessLogEntry) -> LoggedResponse:
    """What epp reads of ``log`` once it went over the wire."""
    return read_entry(LenientAccessLogs.FromString(wire(log)).http_logs.log_entry[0])


def test_bytes_that_are_not_utf8_in_any_string_lose_nothing() -> None:
    # Envoy copies the client's path as sent; Python's protobuf refuses the message.
    log = entry(usage='"usage":{"prompt_tokens":7,"completion_tokens":3}} PLACEHOLD')
    log.request.path = "/v1/PLACEHOLD"
    log.request.user_agent = "PLACEHOLD"
    raw = wire(log).replace(b"PLACEHOLD", b"\xff\xfe\xc3(\x80\xa0\xe2\x82(")
    with pytest.raises(DecodeError):
        StreamAccessLogsMessage.FromString(raw)
    (lenient,) = LenientAccessLogs.FromString(raw).http_logs.log_entry
    assert lenient.request.request_id == b"req-1"
    logged = read_entry(lenient)
    assert logged.usage == Usage(7, 3) and logged.first_token_s == pytest.approx(0.25)


def test_an_entry_gives_first_token_usage_size_and_completion() -> None:
    logged = logged_response(entry())
    assert logged == LoggedResponse(
        first_token_s=pytest.approx(0.25),  # type: ignore[arg-type]
        ended_s=pytest.approx(1.5),  # type: ignore[arg-type]
        body_bytes=900,
        usage=Usage(7, 3),
        completed=True,
    )


@pytest.mark.parametrize(
    "flags",
    [
        ResponseFlags(downstream_connection_termination=True),
        ResponseFlags(upstream_remote_reset=True),
        ResponseFlags(stream_idle_timeout=True),
    ],
)
def test_a_reset_or_a_client_gone_is_not_completed(flags: ResponseFlags) -> None:
    assert logged_response(entry(flags=flags)).completed is False


def test_readings_out_of_range_or_absent_are_dropped() -> None:
    before_start = logged_response(entry(first_token_ms=STARTED_MS - 5_000))
    assert before_start.first_token_s is None
    forged = logged_response(entry(first_token_ms=1e18, usage='"usage":"many"'))
    assert (forged.first_token_s, forged.usage) == (None, None)
    bare = logged_response(entry(first_token_ms=None, usage=None, ended_s=None))
    assert (bare.first_token_s, bare.usage, bare.completed) == (None, None, False)
    wrong_type = HTTPAccessLogEntry()
    wrong_type.common_properties.metadata.filter_metadata[METADATA_NAMESPACE].update(
        {FIRST_TOKEN_MS_KEY: "soon", USAGE_KEY: 7}
    )
    assert logged_response(wrong_type).usage is None


def timed_entry(value: str) -> HTTPAccessLogEntry:
    """TIMED mode's entry: no script readings, Envoy's first-body-byte tag."""
    log = entry(first_token_ms=None, usage=None)
    log.common_properties.custom_tags["other"] = "12"
    log.common_properties.custom_tags[FIRST_BODY_US_TAG] = value
    return log


def test_timed_mode_takes_the_first_body_byte_from_its_tag() -> None:
    logged = logged_response(timed_entry("250000"))
    assert logged.first_token_s == pytest.approx(0.25) and logged.usage is None
    assert logged.completed is True and logged.body_bytes == 900
    # The script's reading wins where both came (LOGGED with the tag set by hand).
    both = entry(first_token_ms=STARTED_MS + 100)
    both.common_properties.custom_tags[FIRST_BODY_US_TAG] = "250000"
    assert logged_response(both).first_token_s == pytest.approx(0.1)


@pytest.mark.parametrize("value", ["-", "", "12.5", "-4", "1e9", "9" * 40, "\u0661\u0662"])
def test_a_first_body_tag_that_is_no_count_of_microseconds_is_dropped(value: str) -> None:
    # No body at all ("-" from Envoy), or bytes from anyone else on the port.
    assert logged_response(timed_entry(value)).first_token_s is None


def _response_headers(stream_handle: object) -> None:
    assert callable(stream_handle)
    stream_handle(
        ProcessingRequest(
            response_headers=HttpHeaders(
                headers=HeaderMap(headers=[HeaderValue(key=":status", raw_value=b"200")])
            )
        )
    )


def test_a_routing_stream_records_with_the_readings_its_entry_brings(
    director: Director, recorded: list[FinishedRequest]
) -> None:
    observers = announced(linger_s=60.0)

    async def scenario() -> None:
        stream = routed(director, observers)
        _response_headers(stream.handle)
        stream.close()
        assert recorded == []  # the entry comes after the stream ends
        observers.logged("req-1", logged_response(entry()))

    asyncio.run(scenario())
    (finished,) = recorded
    response = finished.decision.response  # type: ignore[union-attr]
    assert response.usage == Usage(7, 3) and response.completed
    assert response.first_token_at is not None
    assert response.first_token_at - finished.received_at == pytest.approx(0.25)
    assert response.body_bytes == 900
    assert len(observers) == 0


def test_an_entry_read_before_the_routing_stream_closed_is_kept(
    director: Director, recorded: list[FinishedRequest]
) -> None:
    observers = announced(linger_s=60.0)

    async def scenario() -> None:
        stream = routed(director, observers)
        _response_headers(stream.handle)
        observers.logged("req-1", logged_response(entry()))
        assert recorded == []
        started = time.monotonic()
        stream.close()  # records at once: nothing more to wait for
        assert time.monotonic() - started < 60

    asyncio.run(scenario())
    (finished,) = recorded
    assert finished.decision.response.usage == Usage(7, 3)  # type: ignore[union-attr]


def test_an_entry_for_no_waiting_stream_or_two_is_counted_unmatched(
    director: Director, recorded: list[FinishedRequest]
) -> None:
    observers = ResponseObservers(linger_s=60.0)
    counted = REGISTRY.get_sample_value(
        "epp_response_readings_unmatched_total", {"source": "access_log"}
    )
    observers.logged("nobody", logged_response(entry()))
    assert observers.unmatched == 1 and observers.present
    assert (
        REGISTRY.get_sample_value("epp_response_readings_unmatched_total", {"source": "access_log"})
        == (counted or 0) + 1
    )

    async def scenario() -> None:
        first = routed(director, observers, request_id="twice")
        second = routed(director, observers, request_id="twice")
        for stream in (first, second):
            _response_headers(stream.handle)
        observers.logged("twice", logged_response(entry()))
        for stream in (first, second):
            assert stream.decision is not None and stream.decision.response.usage is None

    asyncio.run(scenario())
    assert observers.unmatched == 2


def test_an_entry_gives_the_status_and_the_endpoint_that_served() -> None:
    log = entry()
    log.response.response_code.value = 503
    upstream = log.common_properties.upstream_remote_address.socket_address
    upstream.address, upstream.port_value = "10.0.0.7", 8000
    logged = logged_response(log)
    assert (logged.status, logged.upstream) == (503, "10.0.0.7:8000")
    upstream.address = "fd00::1"  # written as Envoy writes an IPv6 upstream address
    assert logged_response(log).upstream == "[fd00::1]:8000"
    # No response (the client left first: Envoy logs 0), nothing upstream, or junk.
    assert logged_response(entry()).status is None
    assert logged_response(entry()).upstream is None
    for code in (0, 99, 600, 4_000_000_000):
        log.response.response_code.value = code
        assert logged_response(log).status is None
    upstream.address = "9" * 100_000  # bounded before it becomes a string
    assert len(logged_response(log).upstream or "") <= 64 + len(":8000") + 2
    upstream.port_value = 0
    assert logged_response(log).upstream is None


def test_without_response_headers_the_entry_is_where_the_response_shows(
    director: Director, recorded: list[FinishedRequest]
) -> None:
    # LOGGED and TIMED as `epp envoy-config` prints them: Envoy sends the routing stream
    # no response headers, so until the entry comes epp knows nothing of the response.
    observers = announced(linger_s=60.0)
    log = entry()
    log.response.response_code.value = 503
    upstream = log.common_properties.upstream_remote_address.socket_address
    upstream.address, upstream.port_value = "10.0.0.7", 8000

    async def scenario() -> None:
        stream = routed(director, observers, response_headers_skipped=True)
        decision = stream.decision
        assert decision is not None
        stream.close()  # the response ended: the load is released, the entry awaited
        assert decision.finished and recorded == []
        assert not director.health.in_backoff(decision.endpoints[0])
        observers.logged("req-1", logged_response(log))
        # The 503 counts against the endpoint as it would have at the response headers.
        assert director.health.in_backoff(decision.endpoints[0])

    asyncio.run(scenario())
    (finished,) = recorded
    response = finished.decision.response  # type: ignore[union-attr]
    assert response.status == 503 and response.streamed  # the request asked to stream
    assert response.served_endpoint == "10.0.0.7:8000"
    assert len(observers) == 0


def test_without_response_headers_a_lost_entry_still_records_the_request(
    director: Director, recorded: list[FinishedRequest]
) -> None:
    observers = announced(linger_s=0.01)

    async def scenario() -> None:
        stream = routed(director, observers, response_headers_skipped=True)
        stream.close()
        assert recorded == []
        # A timer due after the linger's: the loop runs the linger's first.
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    (finished,) = recorded
    assert finished.decision.response.status is None  # type: ignore[union-attr]
    assert len(observers) == 0
