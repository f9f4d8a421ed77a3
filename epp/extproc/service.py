"""The ``envoy.service.ext_proc.v3.ExternalProcessor`` gRPC service on grpc.aio.

A stream that breaks the protocol (a message out of order, bytes that are no
ProcessingRequest) is the peer's fault, not epp's: it ends with INVALID_ARGUMENT, is
counted as ``stream_errors{reason="protocol"}`` and logged as a warning without a
traceback, at most once per ``_PROTOCOL_LOG_INTERVAL_S`` so a flood cannot fill the log.
Any other exception is an epp bug: INTERNAL, ``reason="exception"``, and a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest, ProcessingResponse
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2_grpc

from epp.envoy_response_meter import (
    BODY_CHUNK_METADATA,
    RESPONSE_HEADERS_METADATA,
    RESPONSE_HEADERS_SKIPPED,
    RESPONSE_READINGS_METADATA,
)
from epp.extproc.access_log import AccessLogReceiver, access_log_handler
from epp.extproc.body_budget import BodyBudget
from epp.extproc.messages import MAX_STREAMED_CHUNK_BYTES, RoutingResponses
from epp.extproc.response_observer import ResponseObservers
from epp.extproc.stream import ProtocolViolation, RequestStream
from epp.observability import metrics
from epp.observability.logging import clip
from epp.routing import Router

__all__ = ["ExternalProcessor", "create_grpc_server", "create_health_server"]

log = logging.getLogger(__name__)

_PROTOCOL_LOG_INTERVAL_S = 10.0


class ExternalProcessor(external_processor_pb2_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """One ``RequestStream`` per gRPC stream; a failure on one stream stays on it."""

    def __init__(
        self,
        director: Router,
        *,
        max_body_bytes: int,
        inject_stream_usage: bool = False,
        servers_add_stream_usage: bool = False,
        body_budget: BodyBudget | None = None,
        body_chunk_ceiling: int = 4 * 1024 * 1024,
    ) -> None:
        self._director = director
        self._max_body_bytes = max_body_bytes
        self._inject_stream_usage = inject_stream_usage
        self._servers_add_stream_usage = servers_add_stream_usage
        # What the routing streams' gRPC metadata says of their Envoy, once one carried
        # epp's keys (the bootstrap `epp envoy-config` prints): whether its Lua response
        # meter reads bodies (LOGGED), and the largest body chunk it takes back.
        self._settled = False
        self._envoy_meter = False
        self._headers_skipped = False
        self._body_chunk_bytes = MAX_STREAMED_CHUNK_BYTES
        # Above this a chunk could not be sent (gRPC's send limit, less room for framing).
        self._body_chunk_ceiling = max(MAX_STREAMED_CHUNK_BYTES, body_chunk_ceiling)
        self._routing_responses = RoutingResponses()
        self.body_budget = body_budget or BodyBudget(0)
        self.observers = ResponseObservers()
        self._protocol_logged_at = float("-inf")
        self._protocol_unlogged = 0  # violations since the last one logged

    async def Process(
        self,
        request_iterator: AsyncIterator[ProcessingRequest],
        context: grpc.aio.ServicerContext[ProcessingRequest, ProcessingResponse],
    ) -> AsyncIterator[ProcessingResponse]:
        messages = aiter(request_iterator)
        stream: RequestStream | None = None
        try:
            first = await anext(messages, None)
            if first is None:
                return
            if first.observability_mode:
                # The response observer's stream: Envoy reads no reply, so none is sent.
                if first.WhichOneof("request") != "response_headers":
                    raise ProtocolViolation("an observing stream must open with response headers")
                await self.observers.observe(first, messages)
                return
            if not self._settled:
                self._read_stream_metadata(context)
            stream = RequestStream(
                self._director,
                max_body_bytes=self._max_body_bytes,
                routing_responses=self._routing_responses,
                inject_stream_usage=self._inject_stream_usage,
                envoy_meters_usage=self._envoy_meter and not self._servers_add_stream_usage,
                response_headers_skipped=self._headers_skipped,
                body_chunk_bytes=self._body_chunk_bytes,
                body_budget=self.body_budget,
                observers=self.observers,
            )
            for response in stream.handle(first):
                yield response
            async for message in messages:
                for response in stream.handle(message):
                    yield response
        except (ProtocolViolation, DecodeError) as exc:
            self._protocol_violation(
                "ext_proc stream for request "
                + clip(stream.headers.get("x-request-id", "-") if stream else "-"),
                exc,
            )
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"not an ext_proc stream epp can follow: {exc}"
            )
        except Exception:
            # A bug, not a client error: fail this stream only, loudly, and keep serving.
            metrics.STREAM_ERRORS.labels("exception").inc()
            log.exception(
                "ext_proc stream for request %s failed",
                stream.headers.get("x-request-id", "-") if stream else "-",
            )
            await context.abort(grpc.StatusCode.INTERNAL, "epp failed to process the request")
        finally:
            if stream is not None:
                stream.close()

    def _read_stream_metadata(
        self, context: grpc.aio.ServicerContext[ProcessingRequest, ProcessingResponse]
    ) -> None:
        """Take what the stream's gRPC metadata says of its Envoy: response readings
        (``x-epp-response-readings``: the access log or observer brings them; ``logged``:
        the Lua meter reads bodies), response headers skipped (``x-epp-response-headers``)
        and the body chunk it takes back. Once a stream carried any, never read again:
        this costs the first streams only (all of them behind an Envoy that sends none,
        a gateway's)."""
        for key, value in context.invocation_metadata() or ():
            if key == RESPONSE_READINGS_METADATA:
                self.observers.present = True
                self._envoy_meter = value == "logged"
                self._settled = True
            elif key == RESPONSE_HEADERS_METADATA:
                self._headers_skipped = value == RESPONSE_HEADERS_SKIPPED
                self._settled = True
            elif key == BODY_CHUNK_METADATA:
                self._settled = True
                # Envoy's configuration, but bounded all the same: digits, within limits.
                text = str(value)
                if len(text) <= 10 and text.isdigit():
                    self._body_chunk_bytes = min(
                        max(int(text), MAX_STREAMED_CHUNK_BYTES), self._body_chunk_ceiling
                    )

    def protocol_violation(self, exc: Exception) -> None:
        """A peer on another of epp's gRPC services (Envoy's access log) broke its protocol."""
        self._protocol_violation("access log stream", exc)

    def _protocol_violation(self, what: str, exc: Exception) -> None:
        metrics.STREAM_ERRORS.labels("protocol").inc()
        now = time.monotonic()
        if now - self._protocol_logged_at < _PROTOCOL_LOG_INTERVAL_S:
            self._protocol_unlogged += 1
            return
        since = (
            f" ({self._protocol_unlogged} more since the last one logged)"
            if self._protocol_unlogged
            else ""
        )
        self._protocol_logged_at, self._protocol_unlogged = now, 0
        log.warning("%s broke the protocol and was failed: %s%s", what, clip(str(exc)), since)


def create_grpc_server(
    director: Router,
    *,
    address: str,
    max_body_bytes: int,
    health_servicer: health.aio.HealthServicer | None = None,
    tls: grpc.ServerCredentials | None = None,
    inject_stream_usage: bool = False,
    servers_add_stream_usage: bool = False,
    body_budget: BodyBudget | None = None,
    max_receive_message_bytes: int | None = None,
    max_send_message_bytes: int | None = None,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with ext_proc, Envoy's access log receiver (the channel of
    ``--response-body-mode LOGGED``) and gRPC health, bound to ``address``.

    With ``tls`` credentials it serves TLS. Returns the server and the port bound
    (``address`` may end in ``:0``). The message limits default to the largest body
    plus 1 MiB, at least 4 MiB. ``reuse_port``: several processes (``epp serve
    --workers``) listen on the same port and the kernel spreads connections over them;
    off otherwise, so a second epp on a taken port fails instead of sharing it.
    """
    # Envoy sends each body chunk (and a buffered body whole) as one gRPC message.
    max_message = max(4 * 1024 * 1024, max_body_bytes + 1024 * 1024)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_receive_message_bytes or max_message),
            ("grpc.max_send_message_length", max_send_message_bytes or max_message),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            # Envoy keeps one HTTP/2 connection open; answer its keepalive pings.
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    processor = ExternalProcessor(
        director,
        max_body_bytes=max_body_bytes,
        inject_stream_usage=inject_stream_usage,
        servers_add_stream_usage=servers_add_stream_usage,
        body_budget=body_budget,
        body_chunk_ceiling=(max_send_message_bytes or max_message) - 64 * 1024,
    )
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    server.add_generic_rpc_handlers(
        (access_log_handler(AccessLogReceiver(processor.observers, processor.protocol_violation)),)
    )
    if health_servicer is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if tls is not None:
        port = server.add_secure_port(address, tls)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    return server, port


def create_health_server(
    health_servicer: health.aio.HealthServicer, *, address: str, reuse_port: bool = False
) -> tuple[grpc.aio.Server, int]:
    """A plaintext gRPC server with only grpc.health.v1: kubelet's gRPC probes speak no TLS."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen for gRPC health on {address}")
    return server, port
