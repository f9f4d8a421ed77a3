"""Envoy's gRPC access log (``envoy.service.accesslog.v3``), as LOGGED mode's channel.

In ``--response-body-mode LOGGED`` Envoy's Lua response meter
(:mod:`epp.envoy_response_meter`) leaves each response's first-token time and usage in
dynamic metadata, and Envoy's gRPC access logger sends one entry per finished request,
batching many into one message. :class:`AccessLogReceiver` turns each entry into a
:class:`~epp.extproc.response_observer.LoggedResponse` and hands it, by request id, to
the routing stream waiting for it. One long-lived stream per Envoy worker, a message
every 100 ms: a few microseconds of epp's CPU per request, where reading the body
chunks cost a gRPC message each.

Entries come from the gateway, on the ext_proc port, but are read as untrusted all the
same: a value of the wrong type or out of range is dropped, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.accesslog.v3.als_pb2 import StreamAccessLogsMessage, StreamAccessLogsResponse

from epp.api.usage import find_usage
from epp.envoy_response_meter import (
    FIRST_TOKEN_MS_KEY,
    METADATA_NAMESPACE,
    USAGE_KEY,
    USAGE_MAX_BYTES,
)
from epp.extproc.response_observer import LoggedResponse, ResponseObservers

__all__ = ["AccessLogReceiver", "logged_response"]

log = logging.getLogger(__name__)

_MAX_SECONDS = 86_400.0  # a reading past a day is not a response time


def logged_response(entry: HTTPAccessLogEntry) -> LoggedResponse:
    """What one access log entry says of its response."""
    common = entry.common_properties
    readings = common.metadata.filter_metadata.get(METADATA_NAMESPACE)
    first_token_s = None
    usage = None
    if readings is not None:
        fields = readings.fields
        if FIRST_TOKEN_MS_KEY in fields and common.HasField("start_time"):
            started_ms = common.start_time.ToMicroseconds() / 1000
            first_token_s = _seconds((fields[FIRST_TOKEN_MS_KEY].number_value - started_ms) / 1000)
        if USAGE_KEY in fields:
            text = fields[USAGE_KEY].string_value[:USAGE_MAX_BYTES]
            usage = find_usage(text.encode("utf-8", "replace"))
    ended_s = (
        _seconds(common.time_to_last_downstream_tx_byte.ToNanoseconds() / 1e9)
        if common.HasField("time_to_last_downstream_tx_byte")
        else None
    )
    flags = common.response_flags
    reset = (
        flags.downstream_connection_termination
        or flags.downstream_remote_reset
        or flags.upstream_connection_termination
        or flags.upstream_remote_reset
        or flags.local_reset
        or flags.stream_idle_timeout
        or flags.upstream_request_timeout
        or flags.duration_timeout
    )
    return LoggedResponse(
        first_token_s=first_token_s,
        ended_s=ended_s,
        body_bytes=max(0, entry.response.response_body_bytes),
        usage=usage,
        completed=ended_s is not None and not reset,
    )


def _seconds(value: float) -> float | None:
    # A clock step between the two readings, or a forged entry.
    return value if 0.0 <= value <= _MAX_SECONDS else None


class AccessLogReceiver(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """Receives Envoy's access log streams and hands each entry to its routing stream."""

    def __init__(self, observers: ResponseObservers) -> None:
        self._observers = observers
        self.entries = 0  # HTTP entries read, for tests and the debug log

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> StreamAccessLogsResponse:
        observers = self._observers
        async for message in request_iterator:
            for entry in message.http_logs.log_entry:
                self.entries += 1
                observers.logged(entry.request.request_id, logged_response(entry))
        return StreamAccessLogsResponse()
