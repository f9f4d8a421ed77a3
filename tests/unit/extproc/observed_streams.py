"""Routing streams whose response is read elsewhere (an observer, Envoy's access log)."""

from __future__ import annotations

import orjson
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode

from epp.director import Director
from epp.extproc.response_observer import ResponseObservers
from epp.extproc.stream import RequestStream
from tests.unit.extproc.envoy_messages import body_message, headers_message

CHAT = orjson.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})


def announced(linger_s: float) -> ResponseObservers:
    """Observers whose readings a routing stream waits for (its Envoy said they come:
    the routing filter's stream metadata, or an observing stream seen before), for
    ``linger_s`` after it closes."""
    observers = ResponseObservers(linger_s=linger_s)
    observers.present = True
    return observers


def routed(
    director: Director,
    observers: ResponseObservers,
    *,
    request_id: str = "req-1",
    response_body_mode: int = ProcessingMode.NONE,
    response_headers_skipped: bool = False,
) -> RequestStream:
    """A stream that routed a streamed chat request and waits for its response."""
    stream = RequestStream(
        director,
        max_body_bytes=1 << 20,
        observers=observers,
        response_headers_skipped=response_headers_skipped,
    )
    stream.handle(
        headers_message(extra={"x-request-id": request_id}, response_body_mode=response_body_mode)
    )
    stream.handle(body_message(CHAT, end_of_stream=True))
    assert stream.decision is not None
    return stream
