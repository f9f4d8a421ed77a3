"""Envoy's ext_proc messages as the unit tests of the stream build and read them."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue, Metadata
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
    ProtocolConfiguration,
)

FULL_DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = ProcessingMode.BUFFERED


def headers_message(
    *,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    end_of_stream: bool = False,
    body_mode: int = FULL_DUPLEX,
    extra: dict[str, str | bytes] | None = None,
    metadata: Metadata | None = None,
    response_body_mode: int = ProcessingMode.NONE,
) -> ProcessingRequest:
    """Request headers as Envoy sends them; ``extra`` values may be raw bytes."""
    pairs = {":method": method, ":path": path, "x-request-id": "req-1", **(extra or {})}
    return ProcessingRequest(
        request_headers=HttpHeaders(
            headers=HeaderMap(
                headers=[
                    HeaderValue(key=k, raw_value=v if isinstance(v, bytes) else v.encode())
                    for k, v in pairs.items()
                ]
            ),
            end_of_stream=end_of_stream,
        ),
        protocol_config=ProtocolConfiguration(
            request_body_mode=body_mode, response_body_mode=response_body_mode
        ),
        metadata_context=metadata,
    )


def body_message(body: bytes, *, end_of_stream: bool) -> ProcessingRequest:
    return ProcessingRequest(request_body=HttpBody(body=body, end_of_stream=end_of_stream))


def streamed_body(responses: Iterable[ProcessingResponse]) -> bytes:
    """The request body the responses hand back to Envoy in full duplex, joined."""
    return b"".join(r.request_body.response.body_mutation.streamed_response.body for r in responses)


def set_headers(response: ProcessingResponse, which: str) -> dict[str, str]:
    common = getattr(response, which).response
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def lb_destination(response: ProcessingResponse) -> str:
    return (
        response.dynamic_metadata.fields["envoy.lb"]
        .struct_value.fields["x-gateway-destination-endpoint"]
        .string_value
    )
