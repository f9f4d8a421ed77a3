"""Hypothesis strategies for ext_proc streams: what Envoy sends, and what it never would.

A stream is a ``StreamCase``: the gRPC messages in order (a ``ProcessingRequest``, or raw
bytes sent as they are), and whether the client cancels it midway. Four families:

- ``ordered_streams``: what a working Envoy sends: request headers (random names and
  values, non-UTF-8 ``raw_value`` bytes, huge values, many headers, every body mode in
  ``protocol_config``), the body in random chunks ending with end_of_stream or trailers
  (or not ending: the client went away), then maybe the response side.
- ``disordered_streams``: an ordered stream with messages duplicated, dropped, swapped,
  moved or inserted, or messages with no oneof set; and fully random message lists.
- ``garbage_streams``: raw bytes as gRPC messages: random, corrupted or truncated
  serializations, other message types; mixed with real messages.
- ``cancelled_streams``: any of the above, cancelled by the client after k messages.
- ``observing_streams``: the response observer's streams (Envoy's observability mode):
  response headers carrying a request id, then body chunks, sometimes out of order;
  mixed with routing streams (``tagged_streams``) that use the same few ids, so some
  observers find the request they watch and some find none, or two.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeAlias

from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue, Metadata
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    HttpTrailers,
    ProcessingRequest,
    ProcessingResponse,
    ProtocolConfiguration,
)
from google.protobuf.struct_pb2 import Struct
from hypothesis import strategies as st

from tests.fuzz.bodies import body_chunks, rare, request_bodies, valid_request_bodies
from tests.fuzz.harness import GEMMA, QWEN

__all__ = [
    "FULL_DUPLEX",
    "POOL_SLOTS",
    "SUBSET_KEY",
    "SUBSET_NAMESPACE",
    "Payload",
    "StreamCase",
    "cancelled_streams",
    "describe_payload",
    "disordered_streams",
    "garbage_streams",
    "observing_streams",
    "ordered_streams",
    "resolve_case",
    "stream_batches",
    "tagged_streams",
]

FULL_DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = ProcessingMode.BUFFERED
# Every body mode the enum has, and one it does not (proto3 enums are open).
ALL_BODY_MODES = [value for _, value in ProcessingMode.BodySendMode.items()] + [77]
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
# Stand-ins for the pool's addresses, known only once the stack runs: ``resolve_case``
# puts the real ones in (the live pods in order, then the dead endpoint).
POOL_SLOTS = ("{pod0}", "{pod1}", "{pod2}", "{dead0}")

Payload: TypeAlias = "ProcessingRequest | bytes"  # bytes go on the wire as they are


@dataclass(frozen=True)
class StreamCase:
    messages: tuple[Payload, ...]
    cancel_after: int | None = None  # cancel the call once this many messages are written
    family: str = ""

    def __repr__(self) -> str:
        lines = [f"StreamCase({self.family}, cancel_after={self.cancel_after}):"]
        lines += [f"  [{i}] {describe_payload(m)}" for i, m in enumerate(self.messages)]
        return "\n".join(lines)


def _clip(data: bytes | str, limit: int = 60) -> str:
    text = repr(data[:limit])
    return text + (f"...(+{len(data) - limit})" if len(data) > limit else "")


def describe_payload(payload: Payload) -> str:
    """One line for a reproducer; bytes are shown as they were sent."""
    if isinstance(payload, bytes):
        return f"raw bytes {_clip(payload)}"
    kind = payload.WhichOneof("request")
    extra = ""
    if payload.HasField("protocol_config"):
        config = payload.protocol_config
        extra += (
            f" protocol_config(request_body_mode={config.request_body_mode}, "
            f"response_body_mode={config.response_body_mode})"
        )
    if payload.HasField("metadata_context"):
        extra += " metadata_context"
    if kind in ("request_headers", "response_headers"):
        headers: HttpHeaders = getattr(payload, kind)
        shown = [
            f"{_clip(h.key, 30)}={_clip(h.raw_value or h.value.encode(), 40)}"
            for h in headers.headers.headers[:12]
        ]
        more = len(headers.headers.headers) - len(shown)
        return (
            f"{kind}(eos={headers.end_of_stream}, {', '.join(shown)}"
            f"{f', +{more} more' if more > 0 else ''}){extra}"
        )
    if kind in ("request_body", "response_body"):
        body: HttpBody = getattr(payload, kind)
        return f"{kind}(eos={body.end_of_stream}, {len(body.body)}B {_clip(body.body)}){extra}"
    if kind is None:
        return f"ProcessingRequest(no oneof){extra}"
    return f"{kind}{extra}"


# -- request headers ------------------------------------------------------------------------

_TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_KNOWN_NAMES = [
    ":method",
    ":path",
    ":authority",
    ":scheme",
    "content-type",
    "content-length",
    "transfer-encoding",
    "x-request-id",
    "x-gateway-destination-endpoint",
    "x-gateway-model-name",
    "x-gateway-model-name-rewrite",
    "x-gateway-inference-objective",
    "x-llm-d-inference-objective",
    "test-epp-endpoint-selection",
    "x-session-token",
    "host",
]
header_names: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(_KNOWN_NAMES),
    st.text(_TOKEN, min_size=1, max_size=24),
    st.text(st.characters(codec="utf-8"), max_size=12),
)
_small_values: st.SearchStrategy[bytes] = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-_./:;= ", max_size=30).map(str.encode),
    st.binary(max_size=40),  # non-UTF-8 as often as not
    st.text(st.characters(codec="utf-8"), max_size=20).map(str.encode),
    st.sampled_from(
        [
            b"",
            b"\r\n",
            b"\x00",
            b"\xff\xfe",
            b"\x80",
            b"\xc3",
            b" lead",
            b"a\tb",
            QWEN.encode(),
            GEMMA.encode(),
            b"127.0.0.1:1",
            b"10.0.0.9:8000",
        ]
    ),
)
_huge_values: st.SearchStrategy[bytes] = st.tuples(
    st.sampled_from([b"a", b"\xff", b"\xc3\xa9", b"0", b"\r\n"]),
    st.integers(1_000, 200_000),
).map(lambda pair: pair[0] * pair[1])
header_values: st.SearchStrategy[bytes] = rare(_huge_values, _small_values, one_in=20)

_METHODS = st.one_of(
    st.sampled_from(["POST", "POST", "GET", "PUT", "HEAD", "DELETE", "OPTIONS", "", "post"]),
    st.text(_TOKEN, max_size=10),
)
_PATHS = st.one_of(
    st.sampled_from(
        [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/responses",
            "/v1/embeddings",
            "/v1/models",
            "/health",
            "/",
            "*",
            "/v1/chat/completions?x=1",
            "/v1/responses/../models",
        ]
    ),
    st.text(st.characters(codec="utf-8"), max_size=30),
)
_CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "APPLICATION/JSON",
            "multipart/form-data; boundary=x",
            "",
        ]
    ),
    st.text(max_size=20),
)


def _header(key: str, value: bytes, as_string_value: bool) -> HeaderValue:
    if as_string_value:
        try:
            return HeaderValue(key=key, value=value.decode())
        except UnicodeDecodeError:
            pass
    return HeaderValue(key=key, raw_value=value)


@st.composite
def _subset_metadata(draw: st.DrawFn) -> Metadata:
    """An ``envoy.lb.subset_hint`` that names pool and foreign addresses, or is malformed."""
    metadata = Metadata()
    hint = metadata.filter_metadata[SUBSET_NAMESPACE]
    shape = draw(st.sampled_from(["list", "list", "string", "empty", "numbers"]))
    choices = [*POOL_SLOTS, "127.0.0.1:1", "10.0.0.9:8000", "", "not an address"]
    if shape == "list":
        hint[SUBSET_KEY] = draw(st.lists(st.sampled_from(choices), max_size=4))
    elif shape == "string":
        hint[SUBSET_KEY] = draw(st.sampled_from(choices))
    elif shape == "numbers":
        hint[SUBSET_KEY] = [1, 2]
    else:
        hint.update({"other": "x"})
    return metadata


@st.composite
def request_headers(
    draw: st.DrawFn, *, realistic: bool, end_of_stream: bool | None = None
) -> ProcessingRequest:
    """A request_headers message; ``realistic`` ones look like Envoy's (pseudo-headers
    first, one protocol_config naming a mode Envoy is configured with)."""
    method = "POST" if realistic and draw(st.integers(0, 5)) else draw(_METHODS)
    path = draw(
        st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/responses"])
        if realistic
        else _PATHS
    )
    pairs: list[tuple[str, bytes]] = []
    if not realistic or draw(st.integers(0, 9)):
        pairs += [
            (":method", method.encode()),
            (":path", path.encode()),
            (":authority", b"gateway"),
            (":scheme", b"http"),
        ]
    if draw(st.booleans()):
        pairs.append(("content-type", draw(_CONTENT_TYPES).encode()))
    if draw(st.booleans()):
        pairs.append(("x-request-id", draw(header_values)))
    pairs += draw(st.lists(st.tuples(header_names, header_values), max_size=6))
    if draw(st.integers(0, 15)) == 0:  # many headers
        count = draw(st.integers(50, 1_000))
        pairs += [(f"x-many-{i}", b"v" * (i % 50)) for i in range(count)]
    if pairs and draw(st.integers(0, 7)) == 0:  # a header sent twice
        pairs.append(draw(st.sampled_from(pairs)))
    as_value = draw(st.integers(0, 3)) == 0
    eos = draw(st.booleans()) if end_of_stream is None else end_of_stream
    message = ProcessingRequest(
        request_headers=HttpHeaders(
            headers=HeaderMap(headers=[_header(k, v, as_value) for k, v in pairs]),
            end_of_stream=eos,
        )
    )
    if realistic:
        request_mode = draw(st.sampled_from([FULL_DUPLEX, BUFFERED, None]))
        if request_mode is not None:
            message.protocol_config.CopyFrom(
                ProtocolConfiguration(
                    request_body_mode=request_mode,
                    response_body_mode=draw(
                        st.sampled_from([ProcessingMode.NONE, FULL_DUPLEX, BUFFERED])
                    ),
                )
            )
    elif draw(st.booleans()):
        message.protocol_config.CopyFrom(
            ProtocolConfiguration(
                request_body_mode=draw(st.sampled_from(ALL_BODY_MODES)),
                response_body_mode=draw(st.sampled_from(ALL_BODY_MODES)),
                send_body_without_waiting_for_header_response=draw(st.booleans()),
            )
        )
    if draw(st.integers(0, 5)) == 0:
        message.metadata_context.CopyFrom(draw(_subset_metadata()))
    return message


@st.composite
def realistic_request_headers(draw: st.DrawFn, *, end_of_stream: bool) -> ProcessingRequest:
    """Request headers a client's usual request makes, with a rewrite header now and then."""
    message: ProcessingRequest = draw(request_headers(realistic=True, end_of_stream=end_of_stream))
    if draw(st.integers(0, 7)) == 0:
        rewrite = draw(
            st.one_of(
                st.sampled_from([QWEN.encode(), GEMMA.encode(), b"unknown", b""]), header_values
            )
        )
        message.request_headers.headers.headers.append(
            HeaderValue(key="x-gateway-model-name-rewrite", raw_value=rewrite)
        )
    return message


# -- bodies and the response side -------------------------------------------------------------


def body_message(data: bytes, eos: bool, *, response: bool = False) -> ProcessingRequest:
    body = HttpBody(body=data, end_of_stream=eos)
    if response:
        return ProcessingRequest(response_body=body)
    return ProcessingRequest(request_body=body)


def trailers_message(*, response: bool) -> ProcessingRequest:
    trailers = HttpTrailers(
        trailers=HeaderMap(headers=[HeaderValue(key="grpc-status", raw_value=b"0")])
    )
    if response:
        return ProcessingRequest(response_trailers=trailers)
    return ProcessingRequest(request_trailers=trailers)


_STATUSES = rare(
    st.integers(4_000, 6_000).map(lambda n: b"9" * n),
    st.one_of(  # past int()'s limit
        st.sampled_from([b"200", b"200", b"201", b"204", b"400", b"404", b"429", b"500", b"503"]),
        st.text("0123456789", min_size=0, max_size=6).map(str.encode),
        st.sampled_from(
            [
                b"",
                b"-1",
                b"2OO",
                b" 200",
                b"200 ",
                b"\xef\xbc\x92\xef\xbc\x90\xef\xbc\x90",
                b"99999999999999999999",
                b"0",
                b"\xff",
            ]
        ),
    ),
    one_in=25,
)
_RESPONSE_TYPES = st.one_of(
    st.sampled_from(
        [
            b"application/json",
            b"text/event-stream",
            b"text/event-stream; charset=utf-8",
            b"TEXT/EVENT-STREAM",
            b"application/json; charset=utf-8",
            b"text/plain",
            b"",
        ]
    ),
    st.binary(max_size=20),
)


@st.composite
def response_headers(draw: st.DrawFn) -> ProcessingRequest:
    pairs = [(":status", draw(_STATUSES))]
    if draw(st.integers(0, 4)):
        pairs.append(("content-type", draw(_RESPONSE_TYPES)))
    if draw(st.integers(0, 3)) == 0:
        pairs.append(
            (
                "content-encoding",
                draw(
                    st.one_of(
                        st.sampled_from([b"gzip", b"identity", b"br", b""]), st.binary(max_size=8)
                    )
                ),
            )
        )
    pairs += draw(st.lists(st.tuples(header_names, header_values), max_size=3))
    return ProcessingRequest(
        response_headers=HttpHeaders(
            headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v) for k, v in pairs]),
            end_of_stream=draw(st.integers(0, 5)) == 0,
        )
    )


_USAGE_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.integers(0, 5000), st.sampled_from([-1, 2**70, 1.5, "7", None, [], {}])
)


@st.composite
def response_body_data(draw: st.DrawFn) -> bytes:
    """An SSE or JSON response body (possibly truncated), or random bytes."""
    usage = {
        "prompt_tokens": draw(_USAGE_VALUES),
        "completion_tokens": draw(_USAGE_VALUES),
        "total_tokens": draw(_USAGE_VALUES),
    }
    kind = draw(st.sampled_from(["sse", "sse", "json", "responses_sse", "random"]))
    if kind == "sse":
        events = [
            f'data: {{"choices":[{{"delta":{{"content":"tok{i}"}}}}]}}\n\n'
            for i in range(draw(st.integers(0, 4)))
        ]
        if draw(st.booleans()):
            events.append(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n")
        if draw(st.booleans()):
            events.append("data: [DONE]\n\n")
        data = "".join(events).encode()
    elif kind == "responses_sse":
        completed = {"type": "response.completed", "response": {"usage": usage}}
        data = (
            b'event: response.created\ndata: {"type":"response.created"}\n\n'
            b'data: {"type":"response.output_text.delta","delta":"x"}\n\n'
            + f"data: {json.dumps(completed)}\n\n".encode()
        )
    elif kind == "json":
        data = json.dumps({"id": "x", "choices": [{"text": "hi"}], "usage": usage}).encode()
    else:
        return bytes(draw(st.binary(max_size=120)))
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


@st.composite
def response_side(draw: st.DrawFn) -> list[ProcessingRequest]:
    """Response headers, then maybe body chunks ending with end_of_stream or trailers."""
    head = draw(response_headers())
    messages = [head]
    if head.response_headers.end_of_stream:
        return messages
    chunks = draw(body_chunks(draw(response_body_data())))
    ending = draw(st.sampled_from(["eos", "eos", "trailers", "cut"]))
    for i, chunk in enumerate(chunks):
        messages.append(
            body_message(chunk, ending == "eos" and i == len(chunks) - 1, response=True)
        )
    if ending == "trailers":
        messages.append(trailers_message(response=True))
    return messages


# -- whole streams ---------------------------------------------------------------------------


@st.composite
def ordered_streams(draw: st.DrawFn) -> StreamCase:
    """A stream in the order Envoy sends, with contents from plain to hostile.

    The response side follows mostly requests epp should route: after an answer of
    epp's own, Envoy sends nothing more (those streams are here too, less often).
    """
    if draw(st.integers(0, 11)) == 0:
        # Envoy's local reply to a request it refused itself: the response side alone.
        reply = draw(response_side())
        if draw(st.booleans()):  # Envoy names the modes on a stream's first message
            reply[0].protocol_config.response_body_mode = draw(
                st.sampled_from([ProcessingMode.NONE, FULL_DUPLEX, BUFFERED])
            )
        return StreamCase(tuple(reply), family="ordered-local-reply")
    no_body = draw(st.integers(0, 7)) == 0
    realistic = draw(st.integers(0, 3)) != 0
    if realistic:
        head = draw(realistic_request_headers(end_of_stream=no_body))
    else:
        head = draw(request_headers(realistic=False, end_of_stream=no_body))
    messages: list[Payload] = [head]
    complete = True
    routable = realistic and no_body
    if not no_body:
        routable = realistic and draw(st.integers(0, 2)) != 0
        if routable:
            body = draw(valid_request_bodies())[0]
        else:
            body = draw(request_bodies())
        chunks = draw(body_chunks(body))
        ending = draw(st.sampled_from(["eos", "eos", "eos", "trailers", "cut"]))
        for i, chunk in enumerate(chunks):
            messages.append(body_message(chunk, ending == "eos" and i == len(chunks) - 1))
        if ending == "trailers":
            messages.append(trailers_message(response=False))
        complete = ending != "cut"
    wants_response = (draw(st.integers(0, 3)) != 0) if routable else draw(st.integers(0, 5)) == 0
    if complete and wants_response:
        messages += draw(response_side())
    return StreamCase(tuple(messages), family="ordered")


def _any_message() -> st.SearchStrategy[ProcessingRequest]:
    no_oneof = st.sampled_from(
        [
            ProcessingRequest(),
            ProcessingRequest(protocol_config=ProtocolConfiguration(request_body_mode=BUFFERED)),
            ProcessingRequest(observability_mode=True),
            ProcessingRequest(metadata_context=Metadata()),
        ]
    )
    return st.one_of(
        request_headers(realistic=False),
        st.tuples(request_bodies(), st.booleans()).map(lambda p: body_message(p[0], p[1])),
        st.just(trailers_message(response=False)),
        response_headers(),
        st.tuples(response_body_data(), st.booleans()).map(
            lambda p: body_message(p[0], p[1], response=True)
        ),
        st.just(trailers_message(response=True)),
        no_oneof,
    )


@st.composite
def disordered_streams(draw: st.DrawFn) -> StreamCase:
    """Ordered streams, mutated; or random lists of messages."""
    if draw(st.integers(0, 3)) == 0:
        messages = draw(st.lists(_any_message(), max_size=8))
        return StreamCase(tuple(messages), family="random")
    messages = list(draw(ordered_streams()).messages)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(["duplicate", "drop", "swap", "insert", "move_to_front", "no_oneof"])
        )
        i = draw(st.integers(0, max(0, len(messages) - 1)))
        j = draw(st.integers(0, max(0, len(messages) - 1)))
        if op == "insert" or not messages:
            messages.insert(i, draw(_any_message()))
        elif op == "duplicate":
            messages.insert(i + 1, messages[i])
        elif op == "drop":
            del messages[i]
        elif op == "swap":
            messages[i], messages[j] = messages[j], messages[i]
        elif op == "move_to_front":
            messages.insert(0, messages.pop(i))
        else:
            messages.insert(i, ProcessingRequest())
    return StreamCase(tuple(messages), family="disordered")


def _serialized(message: Payload) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


@st.composite
def garbage_payloads(draw: st.DrawFn) -> bytes:
    """Bytes in a gRPC message that may or may not parse as a ProcessingRequest."""
    kind = draw(
        st.sampled_from(
            ["random", "flipped", "truncated", "other_type", "huge_len", "unknown_field"]
        )
    )
    if kind == "random":
        return bytes(draw(st.binary(max_size=96)))
    whole = _serialized(draw(_any_message()))
    if kind == "flipped" and whole:
        at = draw(st.integers(0, len(whole) - 1))
        return whole[:at] + bytes([whole[at] ^ draw(st.integers(1, 255))]) + whole[at + 1 :]
    if kind == "truncated" and whole:
        return whole[: draw(st.integers(0, len(whole) - 1))]
    if kind == "other_type":
        other = ProcessingResponse()
        other.immediate_response.body = b"not a request"
        other.immediate_response.status.code = 400
        return bytes(other.SerializeToString())
    if kind == "huge_len":
        # Field 2 (request_headers... of length 2**31): a length past the message's end.
        return b"\x12\xff\xff\xff\xff\x07" + b"x" * draw(st.integers(0, 10))
    # An unknown field number with a payload, then a real message.
    return b"\xf8\xff\x03\x01" + whole


@st.composite
def garbage_streams(draw: st.DrawFn) -> StreamCase:
    messages: list[Payload] = list(draw(ordered_streams()).messages)
    for _ in range(draw(st.integers(1, 2))):
        at = draw(st.integers(0, len(messages)))
        messages.insert(at, draw(garbage_payloads()))
    if draw(st.integers(0, 3)) == 0:
        messages = messages[: draw(st.integers(1, len(messages)))]
    return StreamCase(tuple(messages), family="garbage")


@st.composite
def cancelled_streams(draw: st.DrawFn) -> StreamCase:
    base: StreamCase = draw(st.one_of(ordered_streams(), disordered_streams(), garbage_streams()))
    return StreamCase(
        base.messages,
        cancel_after=draw(st.integers(0, len(base.messages))),
        family=f"cancelled-{base.family}",
    )


# The ids routing and observing streams share: few, so that they meet.
OBSERVED_IDS = ("obs-0", "obs-1", "obs-2")
_ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"


def _observed(message: ProcessingRequest) -> ProcessingRequest:
    marked = ProcessingRequest()
    marked.CopyFrom(message)
    marked.observability_mode = True
    return marked


@st.composite
def _request_id_attributes(draw: st.DrawFn) -> Struct | None:
    """The ``request.id`` attribute Envoy attaches, or something else in its place."""
    kind = draw(st.sampled_from(["id", "id", "id", "none", "other_key", "not_a_string"]))
    if kind == "none":
        return None
    attributes = Struct()
    if kind == "other_key":
        attributes.update({"request.path": "/v1/chat/completions"})
    elif kind == "not_a_string":
        attributes.update({"request.id": 7})
    else:
        request_id = draw(st.one_of(st.sampled_from(OBSERVED_IDS), st.text(max_size=40)))
        attributes.update({"request.id": request_id})
    return attributes


@st.composite
def observing_streams(draw: st.DrawFn) -> StreamCase:
    """What the observing filter sends: response headers with the request id, then the
    body's chunks; epp answers none of it. Sometimes out of order or cut short."""
    side = draw(response_side())
    head = side[0]
    attributes = draw(_request_id_attributes())
    if attributes is not None:
        head.attributes[_ATTRIBUTES_KEY].CopyFrom(attributes)
    messages: list[ProcessingRequest] = [_observed(m) for m in side]
    if draw(st.integers(0, 4)) == 0:
        op = draw(st.sampled_from(["body_first", "headers_twice", "request_side", "unmarked"]))
        if op == "body_first":
            messages.insert(0, _observed(body_message(b"data: x\n\n", False, response=True)))
        elif op == "headers_twice":
            messages.insert(draw(st.integers(1, len(messages))), messages[0])
        elif op == "request_side":
            at = draw(st.integers(1, len(messages)))
            messages.insert(at, _observed(body_message(b"{}", True)))
        else:  # only the first message carries the mode, as a peer might
            messages[1:] = [
                body_message(m.response_body.body, m.response_body.end_of_stream, response=True)
                if m.HasField("response_body")
                else m
                for m in messages[1:]
            ]
    return StreamCase(tuple(messages), family="observing")


def _with_request_id(pair: tuple[StreamCase, str]) -> StreamCase:
    case, request_id = pair
    first = case.messages[0] if case.messages else None
    if not isinstance(first, ProcessingRequest) or not first.HasField("request_headers"):
        return case
    tagged = ProcessingRequest()
    tagged.CopyFrom(first)
    headers = tagged.request_headers.headers.headers
    kept = [h for h in headers if h.key != "x-request-id"]
    del headers[:]
    headers.extend(kept)
    headers.add(key="x-request-id", raw_value=request_id.encode())
    return StreamCase((tagged, *case.messages[1:]), case.cancel_after, "tagged")


def tagged_streams() -> st.SearchStrategy[StreamCase]:
    """Ordered routing streams whose request id is one the observing streams use."""
    return st.tuples(ordered_streams(), st.sampled_from(OBSERVED_IDS)).map(_with_request_id)


def resolve_case(case: StreamCase, addresses: dict[str, str]) -> StreamCase:
    """``case`` with the pool slots in subset hints replaced by ``addresses``."""
    resolved: list[Payload] = []
    for payload in case.messages:
        if isinstance(payload, ProcessingRequest) and payload.HasField("metadata_context"):
            hint = payload.metadata_context.filter_metadata.get(SUBSET_NAMESPACE)
            if hint is not None and SUBSET_KEY in hint.fields:
                copy = ProcessingRequest()
                copy.CopyFrom(payload)
                value = copy.metadata_context.filter_metadata[SUBSET_NAMESPACE].fields[SUBSET_KEY]
                for item in value.list_value.values:
                    item.string_value = addresses.get(item.string_value, item.string_value)
                if value.WhichOneof("kind") == "string_value":
                    value.string_value = addresses.get(value.string_value, value.string_value)
                payload = copy
        resolved.append(payload)
    return StreamCase(tuple(resolved), case.cancel_after, case.family)


def stream_batches(
    family: st.SearchStrategy[StreamCase],
    size: int,
) -> st.SearchStrategy[list[StreamCase]]:
    return st.lists(family, min_size=1, max_size=size)
