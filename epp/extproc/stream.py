"""One ext_proc stream (one HTTP request) as a state machine over Envoy's messages.

Envoy sends, in order: request headers, request body chunks (unless the request has no
body), maybe request trailers, then response headers/body/trailers as the filter's
processing mode asks. ``RequestStream.handle`` takes one message and returns the
messages to send back; it never does I/O, so it is tested without gRPC.

A message Envoy would never send at that point raises :class:`ProtocolViolation`: the
peer is not a working Envoy, and the stream is failed rather than guessed at. Out of
place are: request headers twice or after a response began; a request body before the
headers or after the request was routed; request trailers after the response began;
response headers twice; a response body after the response ended; a message of no
known kind. Response headers may come before the request was routed: they carry Envoy's
own answer to the client (408 for a request too slow to arrive, 400 for a request it
refused), which passes through unchanged, and request chunks still in flight after it are
dropped. So are messages that cross an answer epp already sent (413, 503): epp sends
nothing after its ImmediateResponse.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence

from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)

from epp.api.model_restore import ModelNameRestorer
from epp.api.usage import UsageReader
from epp.api.usage_injection import UsageEventStripper, rewrite_request_body, wants_usage_option
from epp.errors import BadRequest, EppError, Overloaded, RequestTooLarge
from epp.extproc import messages
from epp.extproc.body_budget import BodyBudget
from epp.extproc.response_observer import BodyWatcher, LoggedResponse, ResponseObservers
from epp.observability import metrics, request_metrics
from epp.observability.logging import clip
from epp.requestcontrol.objectives import OBJECTIVE_HEADERS
from epp.requestcontrol.rewrite import MODEL_REWRITE_HEADERS
from epp.routing import ResponseOutcome, Router, RoutingDecision

__all__ = ["Phase", "ProtocolViolation", "RequestStream", "ResponsePhase"]

log = logging.getLogger(__name__)

_FULL_DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED
_SUBSET_NAMESPACE = "envoy.lb.subset_hint"
_SUBSET_KEY = "x-gateway-destination-endpoint-subset"
_SERVED_NAMESPACE = "envoy.lb"
_SERVED_KEY = "x-gateway-destination-endpoint-served"
_MAX_SERVED_CHARS = 256
# Request body chunks kept apart before they go into one bytearray. Envoy sends a body in
# a few (a 400 KB one in three); joining them once is faster than growing a bytearray,
# whose copy out for the echo costs more than the whole join (benchmarks/bench_stream.py).
# Past either bound the chunks go into the bytearray as they come: a join holds the body
# twice for a moment, which must stay small (concurrent 60 MB uploads measured 20-60 MiB
# more peak memory when up to 16 chunks of any size waited for one join).
_MAX_PIECES = 16
_MAX_PIECES_BYTES = 1024 * 1024
# In a Responses API stream, the "type" of the events that carry generated text
# (response.output_text.delta, response.reasoning_text.delta, ...).
_RESPONSES_TOKEN_MARKER = b'.delta"'
# Request headers whose value steers routing: one that is not UTF-8 is refused rather
# than read as something the client did not send. Other headers are opaque to epp (RFC
# 9110 lets obs-text through) and reach the model server untouched.
_STEERING_HEADERS = frozenset({*MODEL_REWRITE_HEADERS, *OBJECTIVE_HEADERS})
_UNLIMITED = BodyBudget(0)
# One series per mode the protocol defines; a number it does not is "unknown", so a
# peer cannot add series.
_BODY_MODE_COUNTS = {
    number: metrics.REQUEST_BODY_MODES.labels(name)
    for name, number in ProcessingMode.BodySendMode.items()
}
_UNKNOWN_BODY_MODE = metrics.REQUEST_BODY_MODES.labels("unknown")


class ProtocolViolation(Exception):
    """A message Envoy would not send at this point of the stream; fails the stream."""


class Phase(enum.Enum):
    AWAITING_HEADERS = enum.auto()  # nothing seen yet
    GATHERING_BODY = enum.auto()  # headers seen; body chunks arrive until end_of_stream
    ROUTED = enum.auto()  # decision sent; only response-side messages remain
    ANSWERED = enum.auto()  # epp answered with an ImmediateResponse; Envoy ends the stream


class ResponsePhase(enum.Enum):
    NOT_STARTED = enum.auto()  # no response message yet
    STARTED = enum.auto()  # response headers seen; body or trailers may follow
    ENDED = enum.auto()  # end_of_stream or trailers seen: nothing more may come


# Looking up an Enum member costs ~150 ns on Python 3.11, a global ~20 ns, and the state
# machine checks a few per message: the request path reads these.
_AWAITING_HEADERS, _GATHERING_BODY, _ROUTED, _ANSWERED = Phase
_NOT_STARTED, _STARTED, _ENDED = ResponsePhase


class RequestStream:
    """State for one request; create one per gRPC stream and call ``close()`` at its end."""

    def __init__(
        self,
        director: Router,
        *,
        max_body_bytes: int,
        routing_responses: messages.RoutingResponses | None = None,
        default_body_mode: int = _FULL_DUPLEX,
        inject_stream_usage: bool = False,
        envoy_meters_usage: bool = False,
        response_headers_skipped: bool = False,
        body_chunk_bytes: int = messages.MAX_STREAMED_CHUNK_BYTES,
        body_budget: BodyBudget = _UNLIMITED,
        observers: ResponseObservers | None = None,
    ) -> None:
        self._director = director
        self._observers = observers
        self._expecting = False  # registered with the observers, awaiting its response
        self._watcher: _ObservedBody | None = None  # the observing stream's, once matched
        self._record_pending = False  # closed before the observed body ended
        self._logged = False  # Envoy's access log told this response's readings
        self._linger: asyncio.TimerHandle | None = None  # closed, observer not read yet
        self._closed_at = 0.0
        self._budget = body_budget
        self._inject_stream_usage = inject_stream_usage
        # LOGGED mode: Envoy's Lua meter reads bodies for usage unless told not to.
        self._envoy_meters_usage = envoy_meters_usage
        # Envoy sends no response headers (RESPONSE_HEADERS_METADATA): epp's headers for
        # the client go in the routing answer's metadata, the status comes in the log.
        self._headers_skipped = response_headers_skipped
        # The largest body chunk this stream's Envoy takes back (see BODY_CHUNK_METADATA).
        self._body_chunk_bytes = body_chunk_bytes
        self._routing_responses = routing_responses or messages.RoutingResponses()
        self._max_body_bytes = max_body_bytes
        self._body_mode = default_body_mode
        self._response_body_mode = ProcessingMode.NONE
        self.phase = _AWAITING_HEADERS
        self.response_phase = _NOT_STARTED
        self.headers: dict[str, str] = {}
        # The body gathered so far: Envoy's chunks as they came, joined once when the
        # body ends (a body is a few chunks); past _MAX_PIECES chunks (a client
        # trickling bytes) or _MAX_PIECES_BYTES, one growing bytearray instead.
        self._pieces: list[bytes] = []
        self._gathered: bytearray | None = None
        self._reserved = 0  # bytes of the body budget this stream holds
        self._body_bytes = 0
        self._subset: list[str] | None = None
        self.decision: RoutingDecision | None = None
        self._restorer: ModelNameRestorer | None = None  # set when the model was rewritten
        self._received_at = 0.0  # time.monotonic() at the request headers
        self._decision_s: float | None = None  # time spent routing (parse and schedule)
        self._error: EppError | None = None  # what epp answered the request with
        self._local_status: int | None = None  # epp's own answer's status, not an error
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

    def handle(self, message: ProcessingRequest) -> Iterable[ProcessingResponse]:
        """The responses owed to Envoy for ``message`` (often none, in full duplex).

        Raises :class:`ProtocolViolation` for a message out of place.
        """
        kind = message.WhichOneof("request")
        if kind == "response_body":  # most messages are this: decided in two checks
            if self.phase is _ANSWERED:
                return ()  # crossed epp's answer: Envoy ends the stream
            if self.response_phase is _ENDED:
                raise ProtocolViolation("response body after the response ended")
            return self._on_response_body(message)
        if (
            self.phase is _AWAITING_HEADERS
            and self.response_phase is _NOT_STARTED
            and message.HasField("protocol_config")
        ):  # only on the first message
            self._body_mode = message.protocol_config.request_body_mode
            self._response_body_mode = message.protocol_config.response_body_mode
        try:
            if kind == "request_body":
                return self._on_request_body(
                    message.request_body.body, message.request_body.end_of_stream
                )
            if kind == "request_headers":
                return self._on_request_headers(message)
            if kind == "request_trailers":
                return self._on_request_trailers()
            if self.phase is _ANSWERED:
                return ()
            if kind == "response_headers":
                if self.response_phase is not _NOT_STARTED:
                    raise ProtocolViolation("response headers arrived again")
                return self._on_response_headers(message)
            if kind == "response_trailers":
                # Accepted even after a body that ended: answering costs nothing, and a
                # proxy that adds empty trailers to end the exchange must not be failed.
                self.response_phase = _ENDED
                if self.decision is not None:
                    self._response_ended(self.decision)
                return (messages.trailers_response(request=False),)
        except EppError as error:
            return (self._answer(error),)
        raise ProtocolViolation("a message of no known kind")

    def close(self) -> None:
        """The stream is over for whatever reason: release the load it held, record the
        request's metrics and log its line (once its observed body, if any, has ended)."""
        self._drop_body()
        if self.decision is not None:
            self._director.finish(self.decision)
        if self.phase is _AWAITING_HEADERS:
            self._stop_expecting()
            return  # not a request (Envoy opened the stream and gave up at once)
        self._closed_at = time.monotonic()
        if self._watcher is not None:
            self._stop_expecting()
            if not self._watcher.finished:
                # The observing stream still carries the body's end (usage): record then.
                self._record_pending = True
                return
        elif self._expecting and self._body_may_be_observed():
            # Envoy sent the observing stream's messages before ending this one, but epp
            # may not have read them yet (a short response): give them a moment.
            assert self._observers is not None
            self._linger = self._observers.linger(self._observer_missed)
            if self._linger is not None:
                self._record_pending = True
                return
        self._stop_expecting()
        self._finish_unobserved()
        self._record()

    def _body_may_be_observed(self) -> bool:
        decision = self.decision
        return (
            not self._logged
            and decision is not None
            # Without response headers only the access log can say a response came.
            and (decision.response.status is not None or self._headers_skipped)
            and not decision.response.completed
            and self._observers is not None
            and self._observers.present
        )

    def _stop_expecting(self) -> None:
        if self._expecting:
            assert self._observers is not None
            self._observers.forget(self.request_id, self)
            self._expecting = False

    def _finish_unobserved(self) -> None:
        decision = self.decision
        if (
            self._response_body_mode == ProcessingMode.NONE
            and not self._logged
            and decision is not None
            and decision.response.status is not None
            and not decision.response.completed
        ):
            # Without the body, Envoy ending the stream after the response began is all
            # there is to see: a client that went away mid-body looks the same.
            decision.response.completed = True
            decision.response.ended_at = self._closed_at

    def _observer_missed(self) -> None:
        self._linger = None
        self._stop_expecting()
        self._finish_unobserved()
        if self._record_pending:
            self._record_pending = False
            self._record()

    def _observed_body_done(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
            self._stop_expecting()
        if self._record_pending:
            self._record_pending = False
            self._record()

    def _record(self) -> None:
        headers = self.headers
        request_metrics.record_finished(
            request_metrics.FinishedRequest(
                request_id=self.request_id,
                received_at=self._received_at,
                method=headers.get(":method", ""),
                path=headers.get(":path", ""),
                decision=self.decision,
                error=self._error,
                request_bytes=self._body_bytes,
                decision_s=self._decision_s,
                closed_at=self._closed_at,
                answered_status=self._local_status,
            )
        )

    # -- request side -------------------------------------------------------------------

    def _on_request_headers(self, message: ProcessingRequest) -> Sequence[ProcessingResponse]:
        if self.phase is not _AWAITING_HEADERS or self.response_phase is not _NOT_STARTED:
            raise ProtocolViolation(
                f"request headers arrived in phase {self.phase.name}, "
                f"response {self.response_phase.name}"
            )
        self._received_at = time.monotonic()
        headers = self.headers
        undecodable = None
        for header in message.request_headers.headers.headers:
            raw = header.raw_value
            if not raw:
                headers[header.key] = header.value
                continue
            try:
                headers[header.key] = raw.decode()
            except UnicodeDecodeError:
                headers[header.key] = raw.decode(errors="replace")
                if header.key in _STEERING_HEADERS:
                    undecodable = header.key
        self._subset = _subset_hint(message)
        if undecodable is not None:
            raise BadRequest(f"header {undecodable} is not valid UTF-8", code="invalid_header")
        if message.request_headers.end_of_stream:
            started = time.perf_counter()
            answer = self._director.local_answer(
                method=headers.get(":method", "GET"), headers=headers, subset=self._subset
            )
            if answer is not None:
                self.phase = _ANSWERED
                self._decision_s = time.perf_counter() - started
                self._local_status = answer.status
                return (messages.local_response(answer.status, answer.body, answer.content_type),)
            self.phase = _ROUTED
            self.decision = self._director.route_without_body(
                method=headers.get(":method", "GET"),
                request_id=self.request_id,
                headers=headers,
                subset=self._subset,
            )
            self._decision_s = time.perf_counter() - started
            return (self._routing_response(on_body=False),)
        self.phase = _GATHERING_BODY
        _BODY_MODE_COUNTS.get(self._body_mode, _UNKNOWN_BODY_MODE).inc()
        if self._body_mode == _FULL_DUPLEX:
            # Full duplex: the header answer must wait for the body, where the model is.
            return ()
        return (messages.headers_response(),)

    def _on_request_body(self, chunk: bytes, end_of_stream: bool) -> Iterable[ProcessingResponse]:
        if self.phase is not _GATHERING_BODY or self.response_phase is not _NOT_STARTED:
            if self.phase is _ANSWERED or self.phase is _GATHERING_BODY:
                return ()  # sent before Envoy saw the answer (epp's, or its own)
            raise ProtocolViolation(f"request body in phase {self.phase.name}")
        self._body_bytes += len(chunk)
        if self._body_bytes > self._max_body_bytes:
            raise RequestTooLarge(
                f"request body is over {self._max_body_bytes} bytes",
            )
        if chunk:
            if not self._budget.reserve(len(chunk)):
                raise Overloaded(
                    "epp is receiving too many request bytes at once; retry shortly",
                    retry_after_s=1,
                )
            self._reserved += len(chunk)
            gathered = self._gathered
            if gathered is not None:
                gathered += chunk
            else:
                pieces = self._pieces
                pieces.append(chunk)
                if len(pieces) > _MAX_PIECES or self._body_bytes > _MAX_PIECES_BYTES:
                    self._gathered = bytearray().join(pieces)
                    pieces.clear()
        if not end_of_stream:
            return ()
        return self._route_body(ends_request=True)

    def _answered_by_envoy(self) -> bool:
        """Envoy answered the client itself (response headers came while gathering)."""
        return self.phase is _GATHERING_BODY and self.response_phase is not _NOT_STARTED

    def _on_request_trailers(self) -> Sequence[ProcessingResponse]:
        if self.phase is _ANSWERED or self._answered_by_envoy():
            return ()
        if self.response_phase is not _NOT_STARTED:
            raise ProtocolViolation("request trailers after the response began")
        # A body that ended with trailers has not seen end_of_stream on its last chunk.
        if self.phase is _GATHERING_BODY:
            responses = list(self._route_body(ends_request=False))
            responses.append(messages.trailers_response(request=True))
            return responses
        if self.phase is _AWAITING_HEADERS:
            raise ProtocolViolation("request trailers arrived before request headers")
        return (messages.trailers_response(request=True),)

    def _whole_body(self) -> bytes | bytearray:
        """The gathered body in one piece, joined at most once."""
        if self._gathered is not None:
            return self._gathered
        pieces = self._pieces
        if len(pieces) == 1:
            return pieces[0]
        body = b"".join(pieces)
        self._pieces = [body]  # the chunks go now, not when the stream ends
        return body

    def _route_body(self, *, ends_request: bool) -> Iterable[ProcessingResponse]:
        body = self._whole_body()
        self.phase = _ROUTED
        started = time.perf_counter()
        self.decision = decision = self._director.route_body(
            body, request_id=self.request_id, headers=self.headers, subset=self._subset
        )
        self._decision_s = time.perf_counter() - started
        # Only where this stream sees the response body, to strip the event again.
        add_usage = (
            self._inject_stream_usage
            and decision.request.stream
            and self._response_body_mode == _FULL_DUPLEX
            and wants_usage_option(self.headers.get(":path", ""))
        )
        new_model = decision.body_model_changed
        changed = new_model or add_usage
        if changed:
            body, self._usage_added = rewrite_request_body(
                body,
                model=decision.target_model if new_model else None,
                include_usage=add_usage,
            )
        # A chosen model ("auto") stays in the response: the client sees what served it.
        if decision.rewritten:
            self._restorer = ModelNameRestorer(decision.target_model, decision.model)
        if self._body_mode != _FULL_DUPLEX:
            response = self._routing_response(on_body=True)
            if changed:
                response = messages.with_body(
                    response, bytes(body), had_length="content-length" in self.headers
                )
            self._drop_body()
            return (response,)
        # No content-length: Envoy 1.40 drops it in full duplex and sends the body chunked.
        head = self._routing_response(on_body=False)
        if len(body) <= self._body_chunk_bytes:  # most bodies: one message back
            responses = (
                head,
                *messages.streamed_body_responses(
                    (body,), end_of_stream=ends_request, max_chunk_bytes=self._body_chunk_bytes
                ),
            )
            self._drop_body()
            return responses
        return self._hand_body_back(head, body, ends_request)

    def _hand_body_back(
        self, head: ProcessingResponse, body: bytes | bytearray, ends_request: bool
    ) -> Iterator[ProcessingResponse]:
        """The routing answer, then a large body in bounded chunks, built one at a time
        as gRPC sends them; the body's budget is given back once the last one is out."""
        try:
            yield head
            yield from messages.streamed_body_responses(
                (body,), end_of_stream=ends_request, max_chunk_bytes=self._body_chunk_bytes
            )
        finally:
            self._drop_body()

    def _drop_body(self) -> None:
        self._pieces = []
        self._gathered = None
        if self._reserved:
            self._budget.release(self._reserved)
            self._reserved = 0

    def _routing_response(self, *, on_body: bool) -> ProcessingResponse:
        decision = self.decision
        assert decision is not None
        metrics.requests_for(
            decision.model, decision.target_model, decision.priority, decision.fairness_id
        ).inc()
        request_metrics.request_started(decision)
        if self._observers is not None and self._response_body_mode == ProcessingMode.NONE:
            # The body, if any, comes on the observing filter's stream.
            self._observers.expect(self.request_id, self)
            self._expecting = True
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request %s model=%r -> %s (%d candidates scored)",
                clip(decision.request.request_id),
                clip(decision.model) or "-",
                decision.destination,
                decision.candidates,
            )
        # A chat/completions stream that did not ask for usage has none: Envoy's meter
        # need not read it (its time to first token comes from Envoy's access log).
        unmetered = (
            self._envoy_meters_usage
            and decision.request.stream
            and not decision.usage_asked
            and wants_usage_option(self.headers.get(":path", ""))
        )
        return self._routing_responses.get(
            decision.destination,
            decision.model,
            on_body=on_body,
            body_unmetered=unmetered,
            client_headers=self._client_headers(decision) if self._headers_skipped else (),
        )

    def _client_headers(self, decision: RoutingDecision) -> tuple[tuple[str, str], ...]:
        """The headers epp adds to the response the client gets."""
        headers = (*decision.response_headers, *self._director.response_headers(decision))
        if decision.fallback_from:
            fallback = f"{decision.fallback_from} -> {decision.target_model}"
            return (*headers, (messages.MODEL_FALLBACK_HEADER, fallback))
        return headers

    # -- response side ------------------------------------------------------------------

    def _on_response_headers(self, message: ProcessingRequest) -> Sequence[ProcessingResponse]:
        self.response_phase = _ENDED if message.response_headers.end_of_stream else _STARTED
        decision = self.decision
        if decision is not None:
            response = decision.response
            head = _ResponseHead.read(message.response_headers)
            response.status = head.status
            response.streamed = head.streamed
            response.served_endpoint = _served_endpoint(message)
            self._first_token_marker = self._token_marker(head)
            if message.response_headers.end_of_stream:
                self._response_ended(decision)
            elif self._response_body_mode != ProcessingMode.NONE and head.has_usage:
                self._usage_reader = UsageReader(sse=head.streamed)
                if self._usage_added and head.streamed:
                    self._stripper = UsageEventStripper()
            self._director.response_started(decision)
            headers = self._client_headers(decision)
            if headers:
                return (messages.response_headers_response(headers),)
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
        if body.end_of_stream:
            self.response_phase = _ENDED
        restorer = self._restorer
        if self._response_body_mode == _FULL_DUPLEX:
            if self._stripper is not None:
                data = self._stripper.feed(data, end_of_stream=body.end_of_stream)
            if restorer is not None:
                data = restorer.feed(data, end_of_stream=body.end_of_stream)
            return (messages.streamed_response_body_echo(data, end_of_stream=body.end_of_stream),)
        if restorer is not None and body.end_of_stream:  # buffered: the whole body at once
            return (messages.response_body_replaced(restorer.feed(body.body, end_of_stream=True)),)
        return (messages.empty_response_body_response(),)

    def _token_marker(self, head: _ResponseHead) -> bytes | None:
        if head.streamed and self.headers.get(":path", "").startswith("/v1/responses"):
            # response.created and .in_progress come before any token is generated.
            return _RESPONSES_TOKEN_MARKER
        return None

    def watch_response(self, headers: HttpHeaders) -> BodyWatcher | None:
        """The observing filter found this stream's response: read its body from there."""
        if self.decision is None or self._watcher is not None or not self._expecting:
            return None
        head = _ResponseHead.read(headers)
        self._watcher = _ObservedBody(
            self,
            self.decision.response,
            self._token_marker(head),
            UsageReader(sse=head.streamed) if head.has_usage else None,
        )
        return self._watcher

    def accept_logged(self, logged: LoggedResponse) -> None:
        """Envoy measured the response itself (LOGGED mode): take its readings."""
        if self.decision is None or self._watcher is not None or self._logged:
            return
        self._logged = True
        decision = self.decision
        response = decision.response
        if response.status is None and logged.status is not None:
            # Envoy skipped the response headers: the log is where the response shows.
            response.status = logged.status
            # An OpenAI server streams what was asked to stream (SSE), whatever the path.
            response.streamed = decision.request.stream
            response.served_endpoint = logged.upstream
            self._director.response_started(decision)
        # Envoy counts from when it received the request, a moment before epp did.
        if logged.first_token_s is not None and response.first_token_at is None:
            response.first_token_at = self._received_at + logged.first_token_s
        response.body_bytes = max(response.body_bytes, logged.body_bytes)
        if logged.usage is not None:
            response.usage = logged.usage
        if logged.completed and not response.completed:
            response.completed = True
            if logged.ended_s is not None:
                response.ended_at = self._received_at + logged.ended_s
        self._observed_body_done()

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
        self.phase = _ANSWERED
        self._drop_body()
        self._error = error
        decision = self.decision
        if decision is None:
            metrics.errors_for("", "", error.code).inc()
        else:
            metrics.errors_for(
                decision.model,
                decision.target_model,
                error.code,
                decision.priority,
                decision.fairness_id,
            ).inc()
        log.debug(
            "request %s: %s", clip(self.headers.get("x-request-id", "-")), clip(error.message)
        )
        return messages.error_response(error)


class _ResponseHead:
    """What epp reads from response headers."""

    __slots__ = ("content_type", "encoding", "status", "streamed")

    def __init__(self, status: int | None, content_type: bytes, encoding: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.encoding = encoding
        self.streamed = content_type.lower().startswith(b"text/event-stream")

    @classmethod
    def read(cls, message: HttpHeaders) -> _ResponseHead:
        status: int | None = None
        content_type = encoding = b""
        for header in message.headers.headers:
            key = header.key
            if key == ":status":
                raw = header.raw_value or header.value.encode()
                # Three digits, as HTTP has them: int() of thousands would raise.
                status = int(raw) if len(raw) == 3 and raw.isdigit() else None
            elif key == "content-type":
                content_type = header.raw_value or header.value.encode()
            elif key == "content-encoding":
                encoding = header.raw_value or header.value.encode()
        return cls(status, content_type, encoding)

    @property
    def has_usage(self) -> bool:
        """A successful, unencoded JSON or SSE body: one a usage report can be read from."""
        return (
            self.status is not None
            and 200 <= self.status < 300
            and self.encoding in (b"", b"identity")
            and (self.streamed or b"json" in self.content_type)
        )


class _ObservedBody:
    """Reads a response body the observing filter copies to epp (see response_observer)."""

    __slots__ = ("_marker", "_reader", "_response", "_stream", "finished")

    def __init__(
        self,
        stream: RequestStream,
        response: ResponseOutcome,
        marker: bytes | None,
        reader: UsageReader | None,
    ) -> None:
        self._stream = stream
        self._response = response
        self._marker = marker
        self._reader = reader
        self.finished = False

    def feed(self, data: bytes, end_of_stream: bool) -> None:
        if self.finished:
            return
        response = self._response
        if data:
            if response.first_token_at is None and (self._marker is None or self._marker in data):
                response.first_token_at = time.monotonic()
            response.body_bytes += len(data)
            if self._reader is not None:
                self._reader.feed(data)
        if end_of_stream:
            # The routing stream gets no trailers when bodies are observed (Envoy 1.40
            # sends them only with a body mode): the body's end is the response's.
            response.completed = True
            response.ended_at = time.monotonic()
            if self._reader is not None:
                response.usage = self._reader.usage()
                self._reader = None

    def done(self) -> None:
        if not self.finished:
            self.finished = True
            self._stream._observed_body_done()


def _served_endpoint(message: ProcessingRequest) -> str | None:
    """The gateway's ``envoy.lb`` / ``x-gateway-destination-endpoint-served`` report:
    ``None`` without ``envoy.lb`` metadata, ``""`` when it names no endpoint."""
    if not message.HasField("metadata_context"):
        return None
    namespaces = message.metadata_context.filter_metadata
    if _SERVED_NAMESPACE not in namespaces:
        return None
    fields = namespaces[_SERVED_NAMESPACE].fields
    if _SERVED_KEY not in fields:
        return ""
    served: str = fields[_SERVED_KEY].string_value
    return served[:_MAX_SERVED_CHARS]


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
