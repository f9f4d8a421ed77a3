"""One ext_proc stream (one HTTP request) as a state machine over Envoy's messages.

Envoy sends, in order: request headers, request body chunks (unless the request has no
body), maybe request trailers, then response headers/body/trailers as the filter's
processing mode asks. ``RequestStream.handle`` takes one message and returns the
messages to send back; it never does I/O, so it is tested without gRPC.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Sequence

from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest, ProcessingResponse

from epp.api.model_restore import ModelNameRestorer
from epp.api.usage import UsageReader
from epp.api.usage_injection import UsageEventStripper, rewrite_request_body, wants_usage_option
from epp.director import Director, RoutingDecision
from epp.errors import EppError, RequestTooLarge
from epp.extproc import messages
from epp.observability import metrics, request_metrics

__all__ = ["Phase", "RequestStream"]

log = logging.getLogger(__name__)

_FULL_DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED
_SUBSET_NAMESPACE = "envoy.lb.subset_hint"
_SUBSET_KEY = "x-gateway-destination-endpoint-subset"
# In a Responses API stream, the "type" of the events that carry generated text
# (response.output_text.delta, response.reasoning_text.delta, ...).
_RESPONSES_TOKEN_MARKER = b'.delta"'


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
        inject_stream_usage: bool = False,
    ) -> None:
        self._director = director
        self._inject_stream_usage = inject_stream_usage
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
        self._received_at = 0.0  # time.monotonic() at the request headers
        self._decision_s: float | None = None  # time spent routing (parse and schedule)
        self._error: EppError | None = None  # what epp answered the request with
        self._usage_added = False  # include_usage was injected: strip the usage event
        self._usage_reader: UsageReader | None = None
        self._stripper: UsageEventStripper | None = None
        # What marks the first token in the body (None: its first byte does).
        self._first_token_marker: bytes | None = None

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
                    self._response_ended(self.decision)
                return (messages.trailers_response(request=False),)
        except EppError as error:
            return (self._answer(error),)
        metrics.STREAM_ERRORS.labels("unknown_message").inc()
        log.warning("ignoring ext_proc message of unknown kind %r", kind)
        return ()

    def close(self) -> None:
        """The stream is over for whatever reason: release the load it held, record the
        request's metrics and log its line."""
        if self.decision is not None:
            self._director.finish(self.decision)
        if self.phase is Phase.AWAITING_HEADERS:
            return  # not a request (Envoy opened the stream and gave up at once)
        headers = self.headers
        request_metrics.record_finished(request_metrics.FinishedRequest(
            request_id=self.request_id,
            received_at=self._received_at,
            method=headers.get(":method", ""),
            path=headers.get(":path", ""),
            decision=self.decision,
            error=self._error,
            request_bytes=self._body_bytes,
            decision_s=self._decision_s,
            closed_at=time.monotonic(),
        ))

    # -- request side -------------------------------------------------------------------

    def _on_request_headers(self, message: ProcessingRequest) -> Sequence[ProcessingResponse]:
        if self.phase is not Phase.AWAITING_HEADERS:
            metrics.STREAM_ERRORS.labels("out_of_order").inc()
            log.warning("request headers arrived twice on one stream; ignoring the second")
            return ()
        self._received_at = time.monotonic()
        if message.HasField("protocol_config"):
            self._body_mode = message.protocol_config.request_body_mode
            self._response_body_mode = message.protocol_config.response_body_mode
        headers = self.headers
        for header in message.request_headers.headers.headers:
            headers[header.key] = header.raw_value.decode() if header.raw_value else header.value
        self._subset = _subset_hint(message)
        if message.request_headers.end_of_stream:
            self.phase = Phase.ROUTED
            started = time.perf_counter()
            self.decision = self._director.route_without_body(
                method=headers.get(":method", "GET"),
                request_id=self.request_id,
                headers=headers,
                subset=self._subset,
            )
            self._decision_s = time.perf_counter() - started
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
        self.phase = Phase.ROUTED
        started = time.perf_counter()
        self.decision = decision = self._director.route_body(
            body, request_id=self.request_id, headers=self.headers, subset=self._subset
        )
        self._decision_s = time.perf_counter() - started
        add_usage = (self._inject_stream_usage and decision.request.stream
                     and wants_usage_option(self.headers.get(":path", "")))
        changed = decision.rewritten or add_usage
        if changed:
            body, self._usage_added = rewrite_request_body(
                body, model=decision.target_model if decision.rewritten else None,
                include_usage=add_usage)
            chunks = [body]
        if decision.rewritten:
            self._restorer = ModelNameRestorer(decision.target_model, decision.model)
        if self._body_mode != _FULL_DUPLEX:
            response = self._routing_response(on_body=True)
            if changed:
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
        metrics.requests_for(decision.model, decision.target_model, decision.priority).inc()
        request_metrics.request_started(decision)
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
            response = decision.response
            content_type = encoding = b""
            for header in message.response_headers.headers.headers:
                key = header.key
                if key == ":status":
                    status = header.raw_value or header.value.encode()
                    response.status = int(status) if status.isdigit() else None
                elif key == "content-type":
                    content_type = header.raw_value or header.value.encode()
                elif key == "content-encoding":
                    encoding = header.raw_value or header.value.encode()
            response.streamed = content_type.lower().startswith(b"text/event-stream")
            if response.streamed and self.headers.get(":path", "").startswith("/v1/responses"):
                # response.created and .in_progress come before any token is generated.
                self._first_token_marker = _RESPONSES_TOKEN_MARKER
            if message.response_headers.end_of_stream:
                self._response_ended(decision)
            elif (response.status is not None and 200 <= response.status < 300
                  and encoding in (b"", b"identity")
                  and (response.streamed or b"json" in content_type)):
                self._usage_reader = UsageReader(sse=response.streamed)
                if self._usage_added and response.streamed:
                    self._stripper = UsageEventStripper()
            self._director.response_started(decision)
            if decision.fallback_from:
                return (messages.response_headers_response([(
                    messages.MODEL_FALLBACK_HEADER,
                    f"{decision.fallback_from} -> {decision.target_model}")]),)
        return (messages.empty_response_headers_response(),)

    def _on_response_body(self, message: ProcessingRequest) -> Sequence[ProcessingResponse]:
        body = message.response_body
        data = body.body
        decision = self.decision
        if decision is not None:
            response = decision.response
            if data:
                if response.first_token_at is None and (
                    self._first_token_marker is None or self._first_token_marker in data
                ):
                    response.first_token_at = time.monotonic()
                response.body_bytes += len(data)
                if self._usage_reader is not None:
                    self._usage_reader.feed(data)
            if body.end_of_stream:
                self._response_ended(decision)
        restorer = self._restorer
        if self._response_body_mode == _FULL_DUPLEX:
            if self._stripper is not None:
                data = self._stripper.feed(data, end_of_stream=body.end_of_stream)
            if restorer is not None:
                data = restorer.feed(data, end_of_stream=body.end_of_stream)
            return (messages.streamed_response_body_echo(data, end_of_stream=body.end_of_stream),)
        if restorer is not None and body.end_of_stream:  # buffered: the whole body at once
            return (messages.response_body_replaced(
                restorer.feed(body.body, end_of_stream=True)),)
        return (messages.empty_response_body_response(),)

    def _response_ended(self, decision: RoutingDecision) -> None:
        response = decision.response
        if response.completed:
            return
        response.completed = True
        response.ended_at = time.monotonic()
        if self._usage_reader is not None:
            response.usage = self._usage_reader.usage()
            self._usage_reader = None

    def _answer(self, error: EppError) -> ProcessingResponse:
        self.phase = Phase.ANSWERED
        self._chunks = []
        self._error = error
        model = self.decision.model if self.decision else ""
        label = metrics.model_label(model)
        metrics.REQUEST_ERRORS.labels(label, label, error.code).inc()
        log.debug("request %s: %s", self.headers.get("x-request-id", "-"), error.message)
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
