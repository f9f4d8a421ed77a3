"""One ext_proc stream (one HTTP request) as a state machine over Envoy's messages.

Envoy sends, in order: request headers, request body chunks (unless the request has no
body), maybe request trailers, then response headers/body/trailers as the filter's
processing mode asks. ``RequestStream.handle`` takes one message and returns the
messages to send back; it never does I/O, so it is tested without gRPC.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Sequence

from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest, ProcessingResponse

from epp.api.model_restore import ModelNameRestorer
from epp.api.openai import rewrite_model
from epp.director import Director, RoutingDecision
from epp.errors import EppError, RequestTooLarge
from epp.extproc import messages
from epp.observability import metrics

__all__ = ["Phase", "RequestStream"]

log = logging.getLogger(__name__)

_FULL_DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED
_SUBSET_NAMESPACE = "envoy.lb.subset_hint"
_SUBSET_KEY = "x-gateway-destination-endpoint-subset"


class Phase(enum.Enum):
    AWAITING_HEADERS = enum.auto()  # nothing seen yet
    GATHERING_BODY = enum.auto()  # headers seen; body chunks arrive until end_of_stream
    AWAITING_TRAILERS = enum.auto()  # routed on a body that ended without end_of_stream
    ROUTED = enum.auto()  # decision sent; only response-side messages remain
    ANSWERED = enum.auto()  # epp answered with an ImmediateResponse; Envoy ends the stream


class RequestStream:
    """State for one request; create one per gRPC stream and call ``close()`` at its end."""

    def __init__(
        self,
        director: Director,
        *,
        max_body_bytes: int,
        routing_responses: messages.RoutingResponses | None = None,
        default_body_mode: int = _FULL_DUPLEX,
    ) -> None:
        self._director = director
        self._routing_responses = routing_responses or messages.RoutingResponses()
        self._max_body_bytes = max_body_bytes
        self._body_mode = default_body_mode
        self._response_body_mode = ProcessingMode.NONE
        self.phase = Phase.AWAITING_HEADERS
        self.headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._body_bytes = 0
        self._subset: list[str] | None = None
        self.decision: RoutingDecision | None = None
        self._restorer: ModelNameRestorer | None = None  # set when the model was rewritten

    @property
    def request_id(self) -> str:
        request_id = self.headers.get("x-request-id")
        if not request_id:
            request_id = self.headers["x-request-id"] = uuid.uuid4().hex
        return request_id

    def handle(self, message: ProcessingRequest) -> Sequence[ProcessingResponse]:
        """The responses owed to Envoy for ``message`` (often none, in full duplex)."""
        kind = message.WhichOneof("request")
        try:
            if kind == "request_headers":
                return self._on_request_headers(message)
            if kind == "request_body":
                return self._on_request_body(message.request_body.body,
                                             message.request_body.end_of_stream)
            if kind == "request_trailers":
                return self._on_request_trailers()
            if kind == "response_headers":
                return self._on_response_headers(message)
            if kind == "response_body":
                return self._on_response_body(message)
            if kind == "response_trailers":
                if self.decision is not None:
                    self.decision.response.completed = True
                return (messages.trailers_response(request=False),)
        except EppError as error:
            return (self._answer(error),)
        metrics.STREAM_ERRORS.labels("unknown_message").inc()
        log.warning("ignoring ext_proc message of unknown kind %r", kind)
        return ()

    def close(self) -> None:
        """The stream is over for whatever reason: release the load it held."""
        if self.decision is not None:
            self._director.finish(self.decision)

    # -- request side -------------------------------------------------------------------

    def _on_request_headers(self, message: ProcessingRequest) -> Sequence[ProcessingResponse]:
        if self.phase is not Phase.AWAITING_HEADERS:
            metrics.STREAM_ERRORS.labels("out_of_order").inc()
            log.warning("request headers arrived twice on one stream; ignoring the second")
            return ()
        if message.HasField("protocol_config"):
            self._body_mode = message.protocol_config.request_body_mode
            self._response_body_mode = message.protocol_config.response_body_mode
        headers = self.headers
        for header in message.request_headers.headers.headers:
            headers[header.key] = header.raw_value.decode() if header.raw_value else header.value
        self._subset = _subset_hint(message)
        if message.request_headers.end_of_stream:
            self.decision = self._director.route_without_body(
                method=headers.get(":method", "GET"),
                request_id=self.request_id,
                headers=headers,
                subset=self._subset,
            )
            self.phase = Phase.ROUTED
            return (self._routing_response(on_body=False),)
        self.phase = Phase.GATHERING_BODY
        if self._body_mode == _FULL_DUPLEX:
            # Full duplex: the header answer must wait for the body, where the model is.
            return ()
        return (messages.headers_response(),)

    def _on_request_body(self, chunk: bytes, end_of_stream: bool) -> Sequence[ProcessingResponse]:
        if self.phase is not Phase.GATHERING_BODY:
            metrics.STREAM_ERRORS.labels("out_of_order").inc()
            log.warning("request body in phase %s; ignoring it", self.phase.name)
            return ()
        self._body_bytes += len(chunk)
        if self._body_bytes > self._max_body_bytes:
            raise RequestTooLarge(
                f"request body is over {self._max_body_bytes} bytes",
            )
        if chunk:
            self._chunks.append(chunk)
        if not end_of_stream:
            return ()
        return self._route_body(ends_request=True)

    def _on_request_trailers(self) -> Sequence[ProcessingResponse]:
        # A body that ended with trailers has not seen end_of_stream on its last chunk.
        if self.phase is Phase.GATHERING_BODY:
            responses = list(self._route_body(ends_request=False))
            responses.append(messages.trailers_response(request=True))
            return responses
        return (messages.trailers_response(request=True),)

    def _route_body(self, *, ends_request: bool) -> Sequence[ProcessingResponse]:
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.decision = decision = self._director.route_body(
            body, request_id=self.request_id, headers=self.headers, subset=self._subset
        )
        self.phase = Phase.ROUTED
        if decision.rewritten:
            body = rewrite_model(body, decision.target_model)
            chunks = [body]
            self._restorer = ModelNameRestorer(decision.target_model, decision.model)
        if self._body_mode != _FULL_DUPLEX:
            response = self._routing_response(on_body=True)
            if decision.rewritten:
                response = messages.with_body(response, body)
            return (response,)
        # No content-length: Envoy 1.40 drops it in full duplex and sends the body chunked.
        responses = [self._routing_response(on_body=False)]
        responses.extend(messages.streamed_body_responses(chunks, end_of_stream=ends_request))
        self._chunks = []
        return responses

    def _routing_response(self, *, on_body: bool) -> ProcessingResponse:
        decision = self.decision
        assert decision is not None
        metrics.requests_for(decision.model, decision.target_model).inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request %s model=%r -> %s (%d candidates scored)",
                decision.request.request_id, decision.model or "-", decision.destination,
                decision.candidates,
            )
        return self._routing_responses.get(decision.destination, decision.model, on_body=on_body)

    # -- response side ------------------------------------------------------------------

    def _on_response_headers(self, message: ProcessingRequest) -> Sequence[ProcessingResponse]:
        decision = self.decision
        if decision is not None:
            for header in message.response_headers.headers.headers:
                if header.key == ":status":
                    status = header.raw_value or header.value.encode()
                    decision.response.status = int(status) if status.isdigit() else None
                    break
            if message.response_headers.end_of_stream:
                decision.response.completed = True
        return (messages.empty_response_headers_response(),)

    def _on_response_body(self, message: ProcessingRequest) -> Sequence[ProcessingResponse]:
        body = message.response_body
        if body.end_of_stream and self.decision is not None:
            self.decision.response.completed = True
        restorer = self._restorer
        if self._response_body_mode == _FULL_DUPLEX:
            data = body.body
            if restorer is not None:
                data = restorer.feed(data, end_of_stream=body.end_of_stream)
            return (messages.streamed_response_body_echo(data, end_of_stream=body.end_of_stream),)
        if restorer is not None and body.end_of_stream:  # buffered: the whole body at once
            return (messages.response_body_replaced(
                restorer.feed(body.body, end_of_stream=True)),)
        return (messages.empty_response_body_response(),)

    def _answer(self, error: EppError) -> ProcessingResponse:
        self.phase = Phase.ANSWERED
        self._chunks = []
        model = self.decision.model if self.decision else ""
        metrics.REQUEST_ERRORS.labels(model, model, error.code).inc()
        log.info(
            "answered request %s with %d %s: %s",
            self.headers.get("x-request-id", "-"),
            error.status,
            error.code,
            error.message,
        )
        return messages.error_response(error)


def _subset_hint(message: ProcessingRequest) -> list[str] | None:
    """The endpoint subset the proxy allows, from ``envoy.lb.subset_hint`` metadata."""
    if not message.HasField("metadata_context"):
        return None
    namespaces = message.metadata_context.filter_metadata
    if _SUBSET_NAMESPACE not in namespaces:
        return None
    fields = namespaces[_SUBSET_NAMESPACE].fields
    if _SUBSET_KEY not in fields:
        return None
    return [value.string_value for value in fields[_SUBSET_KEY].list_value.values]
