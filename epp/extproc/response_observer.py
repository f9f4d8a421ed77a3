"""Response bodies copied to epp by a second ext_proc filter in observability mode.

Streaming every response chunk through the routing stream costs a reply per chunk (in
full duplex, the chunk itself, echoed back) and holds each chunk until epp answers; on
a streamed chat that was most of epp's and its Envoy's CPU per request. The observing
filter (``epp envoy-config``'s default) sends the response headers and each body chunk
on a stream of its own and never waits: epp answers nothing there. Its response headers
carry the request's x-request-id (the ``request.id`` attribute); :class:`ResponseObservers`
matches it to the routing stream that is waiting for that response, and a
:class:`BodyWatcher` reads the chunks for time to first token, size and usage.

In LOGGED mode Envoy reads the body itself and its access log brings the readings
(:mod:`epp.extproc.access_log`): :meth:`ResponseObservers.logged` hands them to the
routing stream the same way, by request id.

A request id seen on two routing streams at once (a client can send its own) matches
neither: their bodies go unobserved rather than to the wrong request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from envoy.service.ext_proc.v3.external_processor_pb2 import HttpHeaders, ProcessingRequest

from epp.api.usage import Usage
from epp.observability.metrics import UNMATCHED_READINGS

__all__ = [
    "BodyWatcher",
    "LoggedResponse",
    "ObservedStream",
    "ResponseObservers",
    "request_id_of",
]

_UNMATCHED_LOGS = UNMATCHED_READINGS.labels("access_log")
_UNMATCHED_OBSERVERS = UNMATCHED_READINGS.labels("observer")
_ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"  # Envoy's key for the filter's attributes
_REQUEST_ID = "request.id"


class BodyWatcher(Protocol):
    def feed(self, data: bytes, end_of_stream: bool) -> None:
        """One response body chunk, as it passed through Envoy."""

    def done(self) -> None:
        """No more chunks will come (the body ended, or the observing stream did)."""


@dataclass(frozen=True, slots=True)
class LoggedResponse:
    """What Envoy measured of one response (LOGGED mode); times count from the moment
    Envoy received the request."""

    first_token_s: float | None
    ended_s: float | None  # the last byte sent to the client
    body_bytes: int
    usage: Usage | None
    completed: bool  # neither side reset the stream or went away before its end
    status: int | None = None  # the response's HTTP status (None: no response)
    upstream: str | None = None  # "host:port" of the endpoint that served it, if any


class ObservedStream(Protocol):
    def watch_response(self, headers: HttpHeaders) -> BodyWatcher | None:
        """A watcher for the body of the response these headers start (None: not wanted)."""

    def accept_logged(self, logged: LoggedResponse) -> None:
        """Envoy's readings of the response, from its access log."""


def request_id_of(message: ProcessingRequest) -> str:
    """The ``request.id`` attribute Envoy attached to a message ("" when absent)."""
    attributes = message.attributes
    if _ATTRIBUTES_KEY not in attributes:
        return ""
    fields = attributes[_ATTRIBUTES_KEY].fields
    return fields[_REQUEST_ID].string_value if _REQUEST_ID in fields else ""


class ResponseObservers:
    """Routing streams waiting for their response, by request id; bounded by the
    streams open at once, as each routing stream forgets itself when it closes."""

    def __init__(self, *, linger_s: float = 1.0) -> None:
        self._waiting: dict[str, list[ObservedStream]] = {}
        self.unmatched = 0  # observing streams that found no single routing stream
        # Set once an observing stream has come: Envoy has the observing filter, so a
        # routing stream that ends first waits up to linger_s for its observer.
        self.present = False
        self.linger_s = linger_s

    def linger(self, give_up: Callable[[], None]) -> asyncio.TimerHandle | None:
        """Call ``give_up`` after ``linger_s`` unless cancelled; None outside an event loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return loop.call_later(self.linger_s, give_up)

    def expect(self, request_id: str, stream: ObservedStream) -> None:
        waiting = self._waiting.get(request_id)
        if waiting is None:
            self._waiting[request_id] = [stream]
        else:
            waiting.append(stream)

    def forget(self, request_id: str, stream: ObservedStream) -> None:
        waiting = self._waiting.get(request_id)
        if waiting is None:
            return
        if stream in waiting:
            waiting.remove(stream)
        if not waiting:
            del self._waiting[request_id]

    def __len__(self) -> int:
        return len(self._waiting)

    def logged(self, request_id: str, logged: LoggedResponse) -> None:
        """Hand Envoy's readings to the one routing stream waiting for ``request_id``."""
        self.present = True
        waiting = self._waiting.get(request_id)
        if waiting is None or len(waiting) != 1:
            self.unmatched += 1
            _UNMATCHED_LOGS.inc()
            return
        waiting[0].accept_logged(logged)

    async def observe(
        self, first: ProcessingRequest, messages: AsyncIterator[ProcessingRequest]
    ) -> None:
        """Follow one observing stream to its end: ``first`` is its response headers."""
        self.present = True
        if first.WhichOneof("request") != "response_headers":
            self.unmatched += 1
            _UNMATCHED_OBSERVERS.inc()
            return
        waiting = self._waiting.get(request_id_of(first))
        if waiting is None or len(waiting) != 1:
            self.unmatched += 1
            _UNMATCHED_OBSERVERS.inc()
            return
        watcher = waiting[0].watch_response(first.response_headers)
        if watcher is None:
            return
        try:
            if first.response_headers.end_of_stream:
                watcher.feed(b"", True)
                return
            async for message in messages:
                if message.WhichOneof("request") != "response_body":
                    return  # trailers, or a peer that is not Envoy: nothing more to read
                body = message.response_body
                watcher.feed(body.body, body.end_of_stream)
                if body.end_of_stream:
                    return
        finally:
            watcher.done()
