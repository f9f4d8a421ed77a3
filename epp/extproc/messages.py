"""Building the ``ProcessingResponse`` messages epp sends to Envoy."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import orjson
from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyResponse,
    HeaderMutation,
    HeadersResponse,
    ImmediateResponse,
    ProcessingResponse,
    TrailersResponse,
)
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct

from epp.envoy_response_meter import (
    BODY_UNMETERED_KEY,
    METADATA_NAMESPACE,
    RESPONSE_HEADERS_KEY,
)
from epp.errors import EppError

__all__ = [
    "DESTINATION_HEADER",
    "LB_METADATA_NAMESPACE",
    "MAX_STREAMED_CHUNK_BYTES",
    "MODEL_FALLBACK_HEADER",
    "MODEL_HEADER",
    "RoutingResponses",
    "destination_metadata",
    "empty_response_body_response",
    "empty_response_headers_response",
    "error_response",
    "header_mutation",
    "headers_response",
    "local_response",
    "response_body_replaced",
    "response_headers_response",
    "routing_response",
    "streamed_body_responses",
    "streamed_response_body_echo",
    "trailers_response",
    "with_body",
]

DESTINATION_HEADER = "x-gateway-destination-endpoint"
MODEL_HEADER = "x-gateway-model-name"
# On the response to a request epp served with a fallback model: "<model> -> <fallback>".
MODEL_FALLBACK_HEADER = "x-gateway-model-fallback"
LB_METADATA_NAMESPACE = "envoy.lb"
# Envoy re-chunks what a processor streams back; chunks under 64 KiB keep every gRPC
# message and Envoy buffer small (the reference EPP uses the same bound).
MAX_STREAMED_CHUNK_BYTES = 62_000

_OVERWRITE = HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD

_EMPTY_HEADERS_RESPONSE = ProcessingResponse(request_headers=HeadersResponse())
_EMPTY_RESPONSE_HEADERS_RESPONSE = ProcessingResponse(response_headers=HeadersResponse())
_EMPTY_RESPONSE_BODY_RESPONSE = ProcessingResponse(response_body=BodyResponse())


def header_mutation(headers: Iterable[tuple[str, str]]) -> HeaderMutation:
    """Set (overwrite, never append) each header; a client-sent copy does not survive."""
    mutation = HeaderMutation()
    _set_headers(mutation, headers)
    return mutation


def _set_headers(mutation: HeaderMutation, headers: Iterable[tuple[str, str]]) -> None:
    # Filling fields in place is several times faster than nested constructors in upb.
    for key, value in headers:
        option = mutation.set_headers.add()
        option.header.key = key
        option.header.raw_value = value.encode()
        option.append_action = _OVERWRITE


def destination_metadata(destination: str) -> Struct:
    """``envoy.lb/x-gateway-destination-endpoint`` dynamic metadata, as the protocol asks."""
    metadata = Struct()
    metadata.get_or_create_struct(LB_METADATA_NAMESPACE)[DESTINATION_HEADER] = destination
    return metadata


def routing_response(
    headers: Iterable[tuple[str, str]],
    destination: str,
    *,
    on_body: bool,
    remove: Iterable[str] = (),
    body_unmetered: bool = False,
    client_headers: Iterable[tuple[str, str]] = (),
) -> ProcessingResponse:
    """The answer that routes a request: header mutation, route cache cleared, metadata.

    It rides on the request-headers answer (full duplex, or a request without a body)
    or, ``on_body``, on the answer to a buffered body. ``remove``: headers to take off.
    ``body_unmetered``: tell LOGGED mode's response meter to leave the body alone.
    ``client_headers``: headers for the response, for the Lua script that sets them
    where Envoy sends epp no response headers.
    """
    response = ProcessingResponse()
    phase = response.request_body if on_body else response.request_headers
    common = phase.response
    _set_headers(common.header_mutation, headers)
    common.header_mutation.remove_headers.extend(remove)
    common.clear_route_cache = True
    if destination:
        response.dynamic_metadata.CopyFrom(destination_metadata(destination))
    if body_unmetered:
        response.dynamic_metadata.get_or_create_struct(METADATA_NAMESPACE)[BODY_UNMETERED_KEY] = (
            True
        )
    if client_headers:
        told = response.dynamic_metadata.get_or_create_struct(METADATA_NAMESPACE)
        wanted = told.get_or_create_struct(RESPONSE_HEADERS_KEY)
        for name, value in client_headers:
            wanted[name] = value
    return response


class RoutingResponses:
    """Routing answers, built once per (destination, model, phase, what the response
    scripts are told) and then reused.

    An empty destination (body-based routing) sets only the model header. A routing
    header epp does not set is removed, so a client's copy never reaches a route or a
    model server: the model header on a request without a body, the destination in
    body-based routing. The answer
    depends on nothing else, and a fleet has few endpoints and models, so a
    small cache turns ~7 µs of protobuf building per request into a dict lookup. It is
    cleared when full, which keeps it bounded whatever the traffic.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._max_entries = max_entries
        self._cache: dict[
            tuple[str, str, bool, bool, tuple[tuple[str, str], ...]], ProcessingResponse
        ] = {}

    def get(
        self,
        destination: str,
        model: str,
        *,
        on_body: bool,
        body_unmetered: bool = False,
        client_headers: tuple[tuple[str, str], ...] = (),
    ) -> ProcessingResponse:
        key = (destination, model, on_body, body_unmetered, client_headers)
        response = self._cache.get(key)
        if response is None:
            headers = [(DESTINATION_HEADER, destination)] if destination else []
            if model:
                headers.append((MODEL_HEADER, model))
            remove = [
                name
                for name, value in ((DESTINATION_HEADER, destination), (MODEL_HEADER, model))
                if not value
            ]
            response = routing_response(
                headers,
                destination,
                on_body=on_body,
                remove=remove,
                body_unmetered=body_unmetered,
                client_headers=client_headers,
            )
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            self._cache[key] = response
        return response


def headers_response() -> ProcessingResponse:
    """Answer to request headers that changes nothing (buffered mode, before the body)."""
    return _EMPTY_HEADERS_RESPONSE


def streamed_body_responses(
    chunks: Iterable[bytes | bytearray],
    *,
    end_of_stream: bool,
    max_chunk_bytes: int = MAX_STREAMED_CHUNK_BYTES,
) -> Iterator[ProcessingResponse]:
    """The request body handed back in full-duplex mode, unchanged, in chunks of at most
    ``max_chunk_bytes``.

    Envoy's own chunk boundaries are kept where they fit, so nothing is joined or copied
    twice; an empty body still sends one (empty) message to carry ``end_of_stream``.
    """
    pending: list[bytes | bytearray | memoryview] = []
    for chunk in chunks:
        if len(chunk) <= max_chunk_bytes:
            if chunk:
                pending.append(chunk)
            continue
        view = memoryview(chunk)
        for start in range(0, len(view), max_chunk_bytes):
            pending.append(view[start : start + max_chunk_bytes])
    if not pending:
        pending.append(b"")
    last = len(pending) - 1
    for index, piece in enumerate(pending):
        response = ProcessingResponse()
        streamed = response.request_body.response.body_mutation.streamed_response
        streamed.body = bytes(piece)
        streamed.end_of_stream = end_of_stream and index == last
        yield response


def trailers_response(*, request: bool) -> ProcessingResponse:
    if request:
        return ProcessingResponse(request_trailers=TrailersResponse())
    return ProcessingResponse(response_trailers=TrailersResponse())


def empty_response_headers_response() -> ProcessingResponse:
    return _EMPTY_RESPONSE_HEADERS_RESPONSE


def response_headers_response(headers: Iterable[tuple[str, str]]) -> ProcessingResponse:
    """Answer to response headers that sets ``headers`` on the response to the client."""
    response = ProcessingResponse()
    _set_headers(response.response_headers.response.header_mutation, headers)
    return response


def empty_response_body_response() -> ProcessingResponse:
    return _EMPTY_RESPONSE_BODY_RESPONSE


def streamed_response_body_echo(body: bytes, *, end_of_stream: bool) -> ProcessingResponse:
    """Pass a response body chunk through unchanged (full-duplex response mode)."""
    response = ProcessingResponse()
    streamed = response.response_body.response.body_mutation.streamed_response
    streamed.body = body
    streamed.end_of_stream = end_of_stream
    return response


def with_body(routing: ProcessingResponse, body: bytes, *, had_length: bool) -> ProcessingResponse:
    """A copy of a buffered-mode routing answer that also replaces the request body.

    ``had_length``: the request came with a content-length, which must then say the new
    body's length (Envoy 1.40 answers 503 to a buffered body mutation that does not
    match it); a chunked request gets none.
    """
    response = ProcessingResponse()
    response.CopyFrom(routing)
    common = response.request_body.response
    common.body_mutation.body = body
    if had_length:
        _set_headers(common.header_mutation, (("content-length", str(len(body))),))
    return response


def response_body_replaced(body: bytes) -> ProcessingResponse:
    """Replace a buffered response body."""
    response = ProcessingResponse()
    response.response_body.response.body_mutation.body = body
    return response


# Why epp refused a request it could not place (the reference EPP's header and values).
DROPPED_REASON_HEADER = "x-llm-d-request-dropped-reason"


def local_response(status: int, body: bytes, content_type: str) -> ProcessingResponse:
    """An ``ImmediateResponse`` with epp's own answer (not an error)."""
    return ProcessingResponse(
        immediate_response=ImmediateResponse(
            status=HttpStatus(code=status),
            headers=header_mutation([("content-type", content_type)]),
            body=body,
            details="epp_answered",
        )
    )


def error_response(error: EppError) -> ProcessingResponse:
    """An ``ImmediateResponse`` carrying an OpenAI-style JSON error body."""
    body = orjson.dumps(
        # OpenAI's shape exactly: param is null where no one parameter is at fault.
        {
            "error": {
                "message": error.message,
                "type": error.error_type,
                "param": None,
                "code": error.code,
            }
        }
    )
    headers = [("content-type", "application/json")]
    if error.retry_after_s is not None:
        headers.append(("retry-after", str(error.retry_after_s)))
    if error.dropped_reason is not None:
        headers.append((DROPPED_REASON_HEADER, error.dropped_reason))
    return ProcessingResponse(
        immediate_response=ImmediateResponse(
            status=HttpStatus(code=error.status),
            headers=header_mutation(headers),
            body=body,
            details=f"epp_{error.code}",
        )
    )
