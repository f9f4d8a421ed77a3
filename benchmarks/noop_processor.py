"""Baseline ext_proc processors: the least a processor must do, in the same stack.

Without ``--destination`` it answers what Envoy's processing mode requires and changes
nothing: in full duplex it hands the request body, and each response body chunk, back as
it came (the "no-op"). With ``--destination ADDR`` it also routes every request to ADDR
with exactly the answer epp sends (destination and model headers, route cache cleared,
``envoy.lb`` metadata), so Envoy does the same work as behind epp and the difference is
epp's own: parsing, scheduling, bookkeeping. Same grpc.aio-on-uvloop server as epp, with
the same grpc setting (``epp/grpc_env.py``).

``--whole-body`` hands the request body back in one message, as epp does behind an Envoy
that takes it; ``--drain-access-log`` serves Envoy's gRPC access log and drops it unparsed
(``benchmarks/bench_long_prompt.py`` puts it behind ``epp envoy-config``'s bootstrap).
``--ext-authz`` serves Envoy's ext_authz ``Check`` instead, one unary call per request
whose answer sets the same routing headers (``bench_long_prompt.ext_authz_bootstrap``
swaps the filter): the floor of routing through ext_authz rather than ext_proc, which epp
does not offer (ext_authz cannot change a body, and the call ends before the response
starts).

    python benchmarks/noop_processor.py PORT [--destination ADDR --model NAME]
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

from epp.grpc_env import apply_grpc_defaults

# The grpc setting `epp serve` starts with (read once, when grpc loads): like for like.
apply_grpc_defaults()

import grpc  # noqa: E402
import uvloop  # noqa: E402
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption  # noqa: E402
from envoy.service.accesslog.v3.als_pb2 import StreamAccessLogsResponse  # noqa: E402
from envoy.service.auth.v3 import external_auth_pb2_grpc  # noqa: E402
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc  # noqa: E402
from envoy.service.ext_proc.v3.external_processor_pb2 import (  # noqa: E402
    HeadersResponse,
    ProcessingRequest,
    ProcessingResponse,
    TrailersResponse,
)

from epp.extproc.access_log import SERVICE  # noqa: E402
from epp.extproc.messages import RoutingResponses  # noqa: E402

_HEADERS = ProcessingResponse(request_headers=HeadersResponse())
_RESPONSE_HEADERS = ProcessingResponse(response_headers=HeadersResponse())
_RESPONSE_TRAILERS = ProcessingResponse(response_trailers=TrailersResponse())


class NoopProcessor(external_processor_pb2_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self, headers_answer: ProcessingResponse = _HEADERS, *, whole_body: bool = False
    ) -> None:
        self._headers_answer = headers_answer
        self._whole_body = whole_body

    async def Process(
        self, request_iterator: AsyncIterator[ProcessingRequest], context: object
    ) -> AsyncIterator[ProcessingResponse]:
        chunks: list[bytes] = []
        async for message in request_iterator:
            kind = message.WhichOneof("request")
            if kind == "request_headers":
                if message.request_headers.end_of_stream:
                    yield self._headers_answer
            elif kind == "request_body":
                chunks.append(message.request_body.body)
                if message.request_body.end_of_stream:
                    yield self._headers_answer
                    if self._whole_body:  # one message, as epp sends to an Envoy that takes it
                        chunks = [b"".join(chunks)]
                    for chunk in chunks:
                        response = ProcessingResponse()
                        streamed = response.request_body.response.body_mutation.streamed_response
                        streamed.body = chunk
                        streamed.end_of_stream = chunk is chunks[-1]
                        yield response
                    chunks = []
            elif kind == "response_headers":
                yield _RESPONSE_HEADERS
            elif kind == "response_body":  # response_body_mode FULL_DUPLEX_STREAMED
                response = ProcessingResponse()
                streamed = response.response_body.response.body_mutation.streamed_response
                streamed.body = message.response_body.body
                streamed.end_of_stream = message.response_body.end_of_stream
                yield response
            elif kind == "response_trailers":
                yield _RESPONSE_TRAILERS


class RoutingAuthorizer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Allows every request, setting the headers a routing answer sets."""

    def __init__(self, routing_answer: ProcessingResponse) -> None:
        self._answer = CheckResponse()
        mutation = routing_answer.request_headers.response.header_mutation
        for option in mutation.set_headers:
            self._answer.ok_response.headers.append(
                HeaderValueOption(
                    header=HeaderValue(key=option.header.key, value=_value(option.header)),
                    append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            )

    async def Check(self, request: CheckRequest, context: object) -> CheckResponse:
        return self._answer


def _value(header: HeaderValue) -> str:
    return header.raw_value.decode() if header.raw_value else header.value


async def drain_access_logs(request_iterator: AsyncIterator[bytes], context: object) -> object:
    async for _ in request_iterator:
        pass
    return StreamAccessLogsResponse()


async def main(
    port: int,
    headers_answer: ProcessingResponse,
    *,
    whole_body: bool = False,
    drain_access_log: bool = False,
    ext_authz: bool = False,
) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    if ext_authz:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            RoutingAuthorizer(headers_answer), server
        )
    else:
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(
            NoopProcessor(headers_answer, whole_body=whole_body), server
        )
    if drain_access_log:  # what Envoy sends in epp envoy-config's LOGGED and TIMED modes
        handler = grpc.stream_unary_rpc_method_handler(
            drain_access_logs,  # the messages stay bytes: nothing is parsed
            response_serializer=StreamAccessLogsResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"StreamAccessLogs": handler}),)
        )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--destination", help="route every request here (ip:port)")
    parser.add_argument("--model", default="", help="x-gateway-model-name to set")
    parser.add_argument(
        "--whole-body", action="store_true", help="hand the request body back in one message"
    )
    parser.add_argument(
        "--drain-access-log", action="store_true", help="serve Envoy's access log, unparsed"
    )
    parser.add_argument(
        "--ext-authz", action="store_true", help="serve ext_authz Check, not ext_proc"
    )
    args = parser.parse_args()
    if args.ext_authz and not args.destination:
        parser.error("--ext-authz routes: it needs --destination")
    answer = _HEADERS
    if args.destination:
        answer = RoutingResponses().get(args.destination, args.model, on_body=False)
    uvloop.run(
        main(
            args.port,
            answer,
            whole_body=args.whole_body,
            drain_access_log=args.drain_access_log,
            ext_authz=args.ext_authz,
        )
    )
