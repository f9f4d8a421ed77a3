"""Talking to epp's ext_proc port: sending a ``StreamCase``, reading what comes back."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    CommonResponse,
    HeaderMutation,
    ProcessingRequest,
    ProcessingResponse,
)
from google.protobuf.message import DecodeError

from tests.fuzz.extproc_strategies import Payload, StreamCase, body_message
from tests.fuzz.harness import GEMMA, QWEN, Pool

__all__ = [
    "DESTINATION",
    "METHOD",
    "REWRITE_HEADER",
    "CallFactory",
    "StreamResult",
    "destination_of",
    "honours_rewrite_header",
    "metadata_destination",
    "run_stream",
    "set_headers",
]

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
DESTINATION = "x-gateway-destination-endpoint"
REWRITE_HEADER = "x-gateway-model-name-rewrite"

CallFactory = Callable[..., Any]  # a sync stream_stream multicallable, raw bytes


@dataclass
class StreamResult:
    case: StreamCase
    responses: list[bytes] = field(default_factory=list)
    code: grpc.StatusCode | None = None
    details: str = ""
    written: int = 0
    hung: bool = False

    @property
    def outcome(self) -> str:
        """The class of the outcome, for the tally."""
        if self.hung:
            return "hang"
        name = self.code.name if self.code is not None else "NO_STATUS"
        answers = []
        for raw in self.responses:
            try:
                response = ProcessingResponse.FromString(raw)
            except DecodeError:
                answers.append("undecodable")
                continue
            if response.HasField("immediate_response"):
                answers.append(f"immediate {response.immediate_response.status.code}")
            elif destination_of(response) is not None:
                answers.append("routed")
        return "/".join([name, *dict.fromkeys(answers)])


def _serialize(payload: Payload) -> bytes:
    return payload if isinstance(payload, bytes) else payload.SerializeToString()


def run_stream(call_factory: CallFactory, case: StreamCase, timeout_s: float) -> StreamResult:
    """Write the case's messages, half-close (or cancel), read everything back.

    The synchronous gRPC API, from a worker thread: grpc.aio's client turns a write that
    races the server's own end of the call into a local INTERNAL ("Internal error from
    Core"), hiding the status epp sent; the synchronous client keeps epp's.
    """
    result = StreamResult(case)
    all_written = threading.Event()  # the iterator was asked past the cancel point
    release = threading.Event()

    def requests() -> Iterator[bytes]:
        for index, payload in enumerate(case.messages):
            if case.cancel_after == index:
                break
            yield _serialize(payload)
            result.written += 1
        all_written.set()
        if case.cancel_after is not None:
            release.wait(timeout_s)  # keep the call open until it is cancelled

    call = call_factory(requests(), timeout=timeout_s)
    if case.cancel_after is not None:
        # Until the messages before the cancel point are out, or epp ended the call first.
        while not all_written.wait(0.005) and not call.done():
            pass
        call.cancel()
        release.set()
    try:
        for raw in call:
            result.responses.append(raw)
    except grpc.RpcError:
        pass  # the status below says which
    result.code = call.code()
    result.details = call.details() or ""
    if result.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        result.hung = True
    return result


def _common(response: ProcessingResponse) -> CommonResponse | None:
    kind = response.WhichOneof("response")
    if kind in ("request_headers", "response_headers", "request_body", "response_body"):
        common: CommonResponse = getattr(response, kind).response
        return common
    return None


def _mutations(response: ProcessingResponse) -> Iterator[HeaderMutation]:
    common = _common(response)
    if common is not None:
        yield common.header_mutation
    kind = response.WhichOneof("response")
    if kind in ("request_trailers", "response_trailers"):
        yield getattr(response, kind).header_mutation
    if kind == "immediate_response":
        yield response.immediate_response.headers


def set_headers(response: ProcessingResponse) -> dict[str, bytes]:
    headers: dict[str, bytes] = {}
    for mutation in _mutations(response):
        for option in mutation.set_headers:
            headers[option.header.key] = option.header.raw_value or option.header.value.encode()
    return headers


def destination_of(response: ProcessingResponse) -> str | None:
    value = set_headers(response).get(DESTINATION)
    return value.decode(errors="replace") if value is not None else None


def metadata_destination(response: ProcessingResponse) -> str | None:
    fields = response.dynamic_metadata.fields
    if "envoy.lb" not in fields:
        return None
    lb = fields["envoy.lb"].struct_value.fields
    if DESTINATION not in lb:
        return None
    return str(lb[DESTINATION].string_value)


def honours_rewrite_header(call_factory: CallFactory, pool: Pool) -> bool:
    """Whether epp lets the rewrite header choose the model: a qwen body with the header
    naming gemma, routed to gemma's pod or not."""
    head = ProcessingRequest()
    for key, value in (
        (":method", b"POST"),
        (":path", b"/v1/completions"),
        (REWRITE_HEADER, GEMMA.encode()),
    ):
        head.request_headers.headers.headers.add(key=key, raw_value=value)
    body = json.dumps({"model": QWEN, "prompt": "which model?", "max_tokens": 1}).encode()
    result = run_stream(call_factory, StreamCase((head, body_message(body, True))), 30.0)
    for raw in result.responses:
        destination = destination_of(ProcessingResponse.FromString(raw))
        if destination is not None:
            return destination in pool.serving(GEMMA)
    raise AssertionError(f"epp did not route the rewrite probe: {result.outcome}")
