"""Envoy's gRPC access log (``envoy.service.accesslog.v3``), as LOGGED and TIMED modes'
channel.

In ``--response-body-mode LOGGED`` Envoy's Lua response meter
(:mod:`epp.envoy_response_meter`) leaves each response's first-token time and usage in
dynamic metadata; in TIMED a custom tag of the entry holds Envoy's own time of the
response body's first byte. Envoy's gRPC access logger sends one entry per finished request,
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
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.service.accesslog.v3.als_pb2 import StreamAccessLogsResponse
from google.protobuf.message import DecodeError

from epp.api.usage import find_usage
from epp.envoy_response_meter import (
    FIRST_BODY_US_TAG,
    FIRST_TOKEN_MS_KEY,
    METADATA_NAMESPACE,
    USAGE_KEY,
    USAGE_MAX_BYTES,
)
from epp.extproc.lenient_access_log import LenientAccessLogs
from epp.extproc.response_observer import LoggedResponse, ResponseObservers

__all__ = ["AccessLogReceiver", "access_log_handler", "logged_response"]

log = logging.getLogger(__name__)

SERVICE = "envoy.service.accesslog.v3.AccessLogService"
_MAX_SECONDS = 86_400.0  # a reading past a day is not a response time
_NAMESPACE = METADATA_NAMESPACE.encode()
_FIRST_TOKEN_MS = FIRST_TOKEN_MS_KEY.encode()
_USAGE = USAGE_KEY.encode()
_FIRST_BODY_US = FIRST_BODY_US_TAG.encode()
_MAX_TAG_DIGITS = 15  # microseconds: past _MAX_SECONDS long before this
_MAX_ADDRESS_BYTES = 64  # an IPv6 address is at most 45 characters


def logged_response(entry: Any) -> LoggedResponse:
    """What one access log entry (a ``LenientAccessLogs`` entry) says of its response."""
    common = entry.common_properties
    first_token_ms = None
    usage = None
    for namespace in common.metadata.filter_metadata:
        if namespace.key != _NAMESPACE:
            continue
        for field in namespace.value.fields:
            if field.key == _FIRST_TOKEN_MS:
                first_token_ms = field.value.number_value
            elif field.key == _USAGE:
                usage = find_usage(field.value.string_value[:USAGE_MAX_BYTES])
    first_token_s = None
    if first_token_ms is not None and common.HasField("start_time"):
        started_ms = common.start_time.ToMicroseconds() / 1000
        first_token_s = _seconds((first_token_ms - started_ms) / 1000)
    elif common.custom_tags:
        first_token_s = _first_body_s(common.custom_tags)
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
    response = entry.response
    code = response.response_code.value if response.HasField("response_code") else 0
    return LoggedResponse(
        first_token_s=first_token_s,
        ended_s=ended_s,
        body_bytes=response.response_body_bytes,
        usage=usage,
        completed=ended_s is not None and not reset,
        # 0: Envoy had no response to log (the client left first).
        status=code if 100 <= code <= 599 else None,
        upstream=_upstream(common),
    )


def _upstream(common: Any) -> str | None:
    """The endpoint that served, as Envoy writes an upstream address ("[v6]:port")."""
    if not common.HasField("upstream_remote_address"):
        return None
    socket = common.upstream_remote_address.socket_address
    host = socket.address[:_MAX_ADDRESS_BYTES].decode(errors="replace")
    if not host or not socket.port_value:
        return None
    return f"[{host}]:{socket.port_value}" if ":" in host else f"{host}:{socket.port_value}"


def _first_body_s(tags: Any) -> float | None:
    """TIMED mode's reading: the tag's microseconds to the response body's first byte
    ("-" or empty when the response had no body, or none came)."""
    for tag in tags:
        if tag.key == _FIRST_BODY_US:
            value = tag.value
            if len(value) <= _MAX_TAG_DIGITS and value.isdigit():
                return _seconds(int(value) / 1e6)
            return None
    return None


def _seconds(value: float) -> float | None:
    # A clock step between the two readings, or a forged entry.
    return value if 0.0 <= value <= _MAX_SECONDS else None


class AccessLogReceiver:
    """Receives Envoy's access log streams and hands each entry to its routing stream.

    ``on_protocol_violation`` hears of a peer whose bytes are no access log message (the
    ext_proc service counts and logs those); the stream then ends INVALID_ARGUMENT.
    """

    def __init__(
        self,
        observers: ResponseObservers,
        on_protocol_violation: Callable[[Exception], None] | None = None,
    ) -> None:
        self._observers = observers
        self._on_protocol_violation = on_protocol_violation

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> StreamAccessLogsResponse:
        observers = self._observers
        try:
            async for message in request_iterator:
                for entry in message.http_logs.log_entry:
                    request_id = entry.request.request_id.decode(errors="replace")
                    observers.logged(request_id, logged_response(entry))
        except DecodeError as exc:
            if self._on_protocol_violation is not None:
                self._on_protocol_violation(exc)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"not an access log stream epp can read: {exc}"
            )
        return StreamAccessLogsResponse()


def access_log_handler(receiver: AccessLogReceiver) -> grpc.GenericRpcHandler:
    """The AccessLogService, reading messages with :data:`LenientAccessLogs`."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "StreamAccessLogs": grpc.stream_unary_rpc_method_handler(
                receiver.StreamAccessLogs,
                request_deserializer=LenientAccessLogs.FromString,
                response_serializer=StreamAccessLogsResponse.SerializeToString,
            )
        },
    )
