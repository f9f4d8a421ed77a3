"""Judging what epp answered a ``StreamCase`` (sent by ``extproc_client``).

Per stream, the properties are:

1. It ends: after the client half-closes (or cancels), the call completes before its
   deadline. A deadline reached is a hang.
2. It never ends INTERNAL or UNKNOWN (an exception in epp), nor with any status that is
   not OK or a client-side protocol error (INVALID_ARGUMENT, FAILED_PRECONDITION,
   RESOURCE_EXHAUSTED, OUT_OF_RANGE, UNIMPLEMENTED).
3. Every response is sane: exactly one ``response`` set; an ``immediate_response`` has a
   4xx/5xx status and an OpenAI-style JSON error body, or status 200 and OpenAI's model
   list or model object (epp answers ``GET /v1/models`` itself); a header epp sets is one Envoy
   accepts (no CR, LF or NUL, under 60 KiB); a destination (header or ``envoy.lb``
   metadata) names only live pods of the pool.
4. Order: a message Envoy would never send at that point (a second request_headers, a
   body before headers or after the request ended, response headers twice, a response
   body after the response ended, a message with no oneof, bytes that are no
   ProcessingRequest) fails the stream with a client-error status. After an
   ``immediate_response`` epp sends nothing more. Response headers with no request
   before them are in order: Envoy sends its own local replies (a request it refused
   itself) through the filter that way.
5. For an in-order stream in FULL_DUPLEX_STREAMED or BUFFERED mode, epp answers exactly
   as the ext_proc contract asks (DESIGN.md): the responses owed to each message and no
   others, ending OK; the body handed back in full duplex is the body sent, byte for
   byte; each response body chunk is echoed in full-duplex response mode.
6. Where the body settles it (``tests.fuzz.bodies.expect_for_body``), the answer is the
   right one: routed to a live pod serving the model (and within the subset hint), or
   the right 4xx/503.

7. An observing stream (observability mode: Envoy reads no reply) gets no response at
   all and ends OK, or with a client-error status when it does not open with response
   headers; it never fails the routing stream it watches.

Response-side messages while the request body is still arriving are left undecided
(either way is clean), as are request trailers after the request ended, a response body
or trailers with no response headers before them (a filter with response_header_mode
SKIP), and response trailers after the response ended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
    ProcessingResponse,
)
from google.protobuf.message import DecodeError

from epp.requestcontrol.objectives import OBJECTIVE_HEADERS
from epp.requestcontrol.rewrite import MODEL_REWRITE_HEADERS
from tests.fuzz.bodies import Expectation, expect_for_body, judge_body
from tests.fuzz.extproc_client import (
    DESTINATION,
    StreamResult,
    destination_of,
    metadata_destination,
    set_headers,
)
from tests.fuzz.extproc_strategies import FULL_DUPLEX, SUBSET_KEY, SUBSET_NAMESPACE, Payload
from tests.fuzz.harness import Pool

__all__ = ["check_stream", "sanity"]

BUFFERED = 2
MODEL_HEADER = "x-gateway-model-name"
# epp's own names (current and legacy), so the oracle follows them when they change.
STEERING_HEADERS = (*MODEL_REWRITE_HEADERS, *OBJECTIVE_HEADERS)
ENVOY_MAX_HEADER_BYTES = 60 * 1024
CLIENT_ERRORS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
BUGS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})

# -- judging responses ---------------------------------------------------------------------


def sanity(response: ProcessingResponse, pool: Pool) -> list[str]:
    """Property 3 for one response."""
    problems: list[str] = []
    kind = response.WhichOneof("response")
    if kind is None:
        problems.append("a ProcessingResponse with no response set")
    if kind == "immediate_response":
        problems += _immediate_problems(response)
    for key, value in set_headers(response).items():
        if any(bad in value for bad in (b"\r", b"\n", b"\x00")):
            problems.append(
                f"sets header {key!r} to a value Envoy refuses (CR/LF/NUL): {value[:80]!r}"
            )
        if len(value) > ENVOY_MAX_HEADER_BYTES:
            problems.append(f"sets header {key!r} to {len(value)} bytes, over Envoy's 60 KiB")
    for where, destination in (
        ("header", destination_of(response)),
        ("envoy.lb metadata", metadata_destination(response)),
    ):
        if destination is None:
            continue
        outside = [a for a in destination.split(",") if a not in pool.pods]
        if outside or not destination:
            problems.append(
                f"destination {where} {destination!r} names "
                f"{outside or 'nothing'}, not a live pod of the pool"
            )
    header, metadata = destination_of(response), metadata_destination(response)
    if header is not None and metadata is not None and header != metadata:
        problems.append(f"destination header {header!r} != envoy.lb metadata {metadata!r}")
    return problems


def _immediate_problems(response: ProcessingResponse) -> list[str]:
    immediate = response.immediate_response
    problems = []
    status = immediate.status.code
    if status == 200:
        return _models_answer_problems(response)
    if not 400 <= status <= 599:
        problems.append(f"immediate_response with status {status}, not 4xx/5xx")
    try:
        error = json.loads(immediate.body)["error"]
        if not all(isinstance(error.get(k), str) for k in ("message", "type", "code")):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        problems.append(
            f"immediate_response {status} body is not an OpenAI error: {immediate.body[:120]!r}"
        )
    content_type = set_headers(response).get("content-type", b"")
    if not content_type.startswith(b"application/json"):
        problems.append(f"immediate_response {status} content-type {content_type!r}")
    return problems


def _models_answer_problems(response: ProcessingResponse) -> list[str]:
    """epp's own 200: OpenAI's list of models or one model, as JSON."""
    body = response.immediate_response.body
    try:
        document = json.loads(body)
        models = document["data"] if document.get("object") == "list" else [document]
        if not all(m["object"] == "model" and isinstance(m["id"], str) for m in models):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        return [f"immediate_response 200 is no OpenAI model list or model: {body[:120]!r}"]
    content_type = set_headers(response).get("content-type", b"")
    if content_type != b"application/json":
        return [f"immediate_response 200 content-type {content_type!r}"]
    return []


def _immediate_code(response: ProcessingResponse) -> str | None:
    try:
        code = json.loads(response.immediate_response.body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


# -- the walk over an in-order stream ------------------------------------------------------


def _parsed(payload: Payload) -> ProcessingRequest | None:
    if not isinstance(payload, bytes):
        return payload
    try:
        return ProcessingRequest.FromString(payload)
    except DecodeError:
        return None


@dataclass(frozen=True, slots=True)
class _RequestFacts:
    """What the request headers settle about the answer; None fields: not settled."""

    method: str | None
    path: str | None  # the one :path, decoded (None: absent, repeated or not UTF-8)
    rewrite: str  # the rewrite header's value, where epp honours it ("": none)
    steering_clear: bool  # steering headers (rewrite, objective) single and UTF-8
    subset: frozenset[str] | None
    subset_clear: bool  # no hint, or a well-formed list of strings
    request_mode: int
    response_mode: int


def _request_facts(message: ProcessingRequest, honour_rewrite: bool) -> _RequestFacts:
    values: dict[str, list[bytes]] = {}
    for header in message.request_headers.headers.headers:
        values.setdefault(header.key, []).append(header.raw_value or header.value.encode())
    method = None
    if len(values.get(":method", [])) == 1:
        method = values[":method"][0].decode(errors="replace")
    elif ":method" not in values:
        method = ""
    path = None
    if len(values.get(":path", [])) == 1:
        try:
            path = values[":path"][0].decode()
        except UnicodeDecodeError:
            path = None
    steering_clear = True
    for name in STEERING_HEADERS:
        found = values.get(name, [])
        if len(found) > 1:
            steering_clear = False
        elif found:
            try:
                found[0].decode()
            except UnicodeDecodeError:
                steering_clear = False
    rewrite = ""
    if honour_rewrite and steering_clear:
        # The first name that holds a value wins, as in epp.requestcontrol.rewrite.
        rewrite = next(
            (
                values[name][0].decode()
                for name in MODEL_REWRITE_HEADERS
                if values.get(name, [b""])[0]
            ),
            "",
        )
    subset, subset_clear = None, True
    if message.HasField("metadata_context"):
        namespaces = message.metadata_context.filter_metadata
        if SUBSET_NAMESPACE in namespaces and SUBSET_KEY in namespaces[SUBSET_NAMESPACE].fields:
            value = namespaces[SUBSET_NAMESPACE].fields[SUBSET_KEY]
            items = value.list_value.values
            if value.WhichOneof("kind") == "list_value" and all(
                item.WhichOneof("kind") == "string_value" for item in items
            ):
                subset = frozenset(item.string_value for item in items)
            else:
                subset_clear = False
    request_mode, response_mode = FULL_DUPLEX, 0
    if message.HasField("protocol_config"):
        request_mode = message.protocol_config.request_body_mode
        response_mode = message.protocol_config.response_body_mode
    return _RequestFacts(
        method, path, rewrite, steering_clear, subset, subset_clear, request_mode, response_mode
    )


class _Walk:
    """Consumes the responses an in-order stream is owed, message by message."""

    def __init__(self, responses: list[ProcessingResponse], pool: Pool) -> None:
        self.responses = responses
        self.at = 0
        self.pool = pool
        self.problems: list[str] = []
        self.answered = False

    def peek(self) -> ProcessingResponse | None:
        return self.responses[self.at] if self.at < len(self.responses) else None

    def take(self, kind: str, context: str) -> ProcessingResponse | None:
        response = self.peek()
        found = response.WhichOneof("response") if response is not None else None
        if found != kind:
            self.problems.append(f"{context}: expected a {kind} response, got {found or 'nothing'}")
            return None
        self.at += 1
        return response

    def immediate_first(self) -> ProcessingResponse | None:
        response = self.peek()
        if response is not None and response.HasField("immediate_response"):
            self.at += 1
            self.answered = True
            return response
        return None

    def check_answer(
        self,
        response: ProcessingResponse | None,
        expected: Expectation | None,
        context: str,
        model: str | None,
    ) -> None:
        """Property 6: an answer (routing or immediate) against what was expected."""
        if response is None or expected is None:
            return
        if response.HasField("immediate_response"):
            status = response.immediate_response.status.code
            code = _immediate_code(response)
            if expected.routes and status == 503 and code in ("no_ready_endpoint", "overloaded"):
                return  # no pod ready for now (scrapes late under load): clean, counted apart
            if status not in expected.statuses:
                wanted = (
                    f"routing to {sorted(expected.destinations)}"
                    if expected.routes
                    else f"status {sorted(expected.statuses)}"
                )
                self.problems.append(f"{context}: expected {wanted}, got {status} ({code})")
            elif expected.code is not None and code != expected.code:
                self.problems.append(
                    f"{context}: expected error code {expected.code!r}, "
                    f"got {code!r} (status {status})"
                )
            return
        destination = destination_of(response)
        if not expected.routes:
            self.problems.append(
                f"{context}: expected status {sorted(expected.statuses)}, "
                f"but epp routed to {destination!r}"
            )
            return
        if destination is None:
            self.problems.append(f"{context}: routing answer without {DESTINATION}")
            return
        wrong = [a for a in destination.split(",") if a not in expected.destinations]
        if wrong:
            self.problems.append(
                f"{context}: routed to {wrong}, expected one of {sorted(expected.destinations)}"
            )
        if model is not None:
            sent = set_headers(response).get(MODEL_HEADER)
            if sent is not None and sent != model.encode():
                self.problems.append(
                    f"{context}: {MODEL_HEADER} {sent[:80]!r}, body model {model[:80]!r}"
                )


@dataclass
class _Order:
    """Where an in-order reading of the stream stopped, and why."""

    violation: str | None = None  # the first message Envoy would never send there
    violation_at: int = -1
    undecided: str | None = None  # a message where either outcome is clean
    after_answer: bool = False  # messages came after epp's immediate_response


def check_stream(result: StreamResult, pool: Pool) -> list[str]:
    """Every property above that this stream breaks, as readable sentences."""
    problems: list[str] = []
    responses: list[ProcessingResponse] = []
    for raw in result.responses:
        try:
            responses.append(ProcessingResponse.FromString(raw))
        except DecodeError:
            problems.append(f"epp sent bytes that are no ProcessingResponse: {raw[:60]!r}")
    for index, response in enumerate(responses):
        problems += [f"response [{index}]: {p}" for p in sanity(response, pool)]
    if result.hung:
        return [
            *problems,
            f"hang: the stream did not end within its deadline ({result.written} messages written)",
        ]
    code = result.code
    status = f"{code.name if code else None} {result.details!r}"
    if result.case.family == "observing":
        return problems + _check_observing(result, responses, code, status)
    if code in BUGS:
        # What the stream was still owed after the exception says nothing more.
        return [*problems, f"ended {status}: an exception in epp"]
    if code not in CLIENT_ERRORS and code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
        problems.append(f"ended {status}: neither OK nor a client-error status")
    immediates = [i for i, r in enumerate(responses) if r.HasField("immediate_response")]
    if immediates and immediates[0] != len(responses) - 1:
        problems.append(
            f"{len(responses) - 1 - immediates[0]} responses after an immediate_response"
        )
    if result.case.cancel_after is not None:
        return problems  # a cancelled stream's responses are cut short anywhere
    if code is grpc.StatusCode.CANCELLED:
        problems.append(f"ended {status} though the client did not cancel it")
    problems += _check_order(result, responses, pool, code)
    return problems


def _check_observing(
    result: StreamResult,
    responses: list[ProcessingResponse],
    code: grpc.StatusCode | None,
    status: str,
) -> list[str]:
    problems: list[str] = []
    if responses:
        kinds = [r.WhichOneof("response") for r in responses]
        problems.append(f"epp answered an observing stream, which Envoy never reads: {kinds}")
    first = _parsed(result.case.messages[0]) if result.case.messages else None
    opens_with_headers = first is not None and first.HasField("response_headers")
    if code in BUGS:
        problems.append(f"ended {status}: an exception in epp")
    elif not opens_with_headers and code not in CLIENT_ERRORS:
        problems.append(f"an observing stream opening with {first!r:.60} ended {status}")
    elif code not in CLIENT_ERRORS and code is not grpc.StatusCode.OK:
        problems.append(f"ended {status}: neither OK nor a client-error status")
    return problems


def _check_order(
    result: StreamResult,
    responses: list[ProcessingResponse],
    pool: Pool,
    code: grpc.StatusCode | None,
) -> list[str]:
    messages = [_parsed(p) for p in result.case.messages]
    first = messages[0] if messages else None
    facts = (
        _request_facts(first, pool.honours_rewrite_header)
        if first is not None and first.WhichOneof("request") is not None
        else None
    )
    local_reply = first is not None and first.HasField("response_headers")
    structured = facts is not None and (
        local_reply or facts.request_mode in (FULL_DUPLEX, BUFFERED)
    )
    walk = _Walk(responses, pool)
    order = _walk_stream(messages, facts, walk if structured else None)
    problems: list[str] = []
    if (
        not structured
        and order.violation_at != 0
        and any(r.HasField("immediate_response") for r in responses)
    ):
        # Where the answer fell among the messages is unknown here: what came after it
        # may be dropped (OK) or refused (a client error); both are clean.
        return problems
    # What the messages before the first one out of place were owed (structured only).
    problems += walk.problems
    if order.violation is not None:
        if code not in CLIENT_ERRORS:
            problems.append(
                f"{order.violation}: the stream should fail with a client-error "
                f"status, it ended {code.name if code else None}"
            )
        return problems
    if order.undecided is not None or order.after_answer:
        return problems  # OK or a client error, both clean; nothing after the answer: above
    if not structured:
        # Another body mode: epp may refuse the stream (a client error) or serve it.
        if code not in CLIENT_ERRORS and code is not grpc.StatusCode.OK:
            problems.append(f"ended {code}")
        return problems
    if code is not grpc.StatusCode.OK:
        problems.append(
            f"an in-order stream ended {code.name if code else None} {result.details!r}, not OK"
        )
    if walk.at < len(responses) and not walk.problems:
        extra = [r.WhichOneof("response") for r in responses[walk.at :]]
        problems.append(f"responses nothing asked for: {extra}")
    return problems


def _walk_stream(
    messages: list[ProcessingRequest | None], facts: _RequestFacts | None, walk: _Walk | None
) -> _Order:
    """Reads the messages in order; with ``walk``, also checks the responses owed."""
    state = "start"
    body = bytearray()
    order = _Order()
    for index, message in enumerate(messages):
        where = f"message [{index}]"
        if walk is not None and walk.answered:
            order.after_answer = True
            return order
        if message is None:
            order.violation = f"{where}: bytes that are no ProcessingRequest"
            order.violation_at = index
            return order
        kind = message.WhichOneof("request")
        if kind is None:
            order.violation = f"{where}: a ProcessingRequest with no oneof set"
            order.violation_at = index
            return order
        if kind == "request_headers":
            if state != "start":
                order.violation = f"{where}: request_headers again (in state {state})"
                order.violation_at = index
                return order
            assert facts is not None
            eos = message.request_headers.end_of_stream
            state = "request_done" if eos else "body"
            if walk is not None:
                _on_headers(walk, facts, eos, where)
        elif state == "start":
            if kind in ("request_body", "request_trailers"):
                order.violation = f"{where}: {kind} before request_headers"
                order.violation_at = index
                return order
            if kind != "response_headers":
                # A local reply through a filter with response_header_mode SKIP.
                order.undecided = f"{where}: {kind} with nothing before it"
                return order
            # Envoy's own reply to a request it refused before the filters saw it (an
            # HTTP/1.1 request without Host, say) goes through the encoder side alone.
            state = "response_done" if message.response_headers.end_of_stream else "response"
            if walk is not None:
                walk.take("response_headers", where)
        elif kind in ("request_body", "request_trailers"):
            if state != "body":
                if kind == "request_trailers" and state == "request_done":
                    order.undecided = f"{where}: request_trailers after the request ended"
                    return order
                order.violation = f"{where}: {kind} after the request ended (state {state})"
                order.violation_at = index
                return order
            assert facts is not None
            if kind == "request_body":
                body += message.request_body.body
                if not message.request_body.end_of_stream:
                    continue
            state = "request_done"
            if walk is not None:
                _on_body_end(
                    walk, facts, bytes(body), by_trailers=kind == "request_trailers", where=where
                )
        elif state == "body":
            order.undecided = f"{where}: {kind} while the request body was still arriving"
            return order
        elif kind == "response_headers":
            if state != "request_done":
                order.violation = f"{where}: response_headers again (state {state})"
                order.violation_at = index
                return order
            state = "response_done" if message.response_headers.end_of_stream else "response"
            if walk is not None:
                walk.take("response_headers", where)
        elif state == "request_done":
            # A filter with response_header_mode SKIP sends the body (or trailers) with no
            # headers before it; epp cannot know the filter's header modes.
            order.undecided = f"{where}: {kind} with no response_headers before it"
            return order
        elif state != "response":
            if kind == "response_trailers":
                # Trailers after a body that ended: a proxy may add empty ones to end the
                # exchange; answering them and failing the stream are both clean.
                order.undecided = f"{where}: response_trailers after the response ended"
                return order
            order.violation = f"{where}: {kind} after the response ended"
            order.violation_at = index
            return order
        elif kind == "response_body":
            if message.response_body.end_of_stream:
                state = "response_done"
            if walk is not None:
                echo = walk.take("response_body", where)
                if echo is not None and facts is not None and not facts.rewrite:
                    _check_echo(walk, facts, message, echo, where)
        else:  # response_trailers
            state = "response_done"
            if walk is not None:
                walk.take("response_trailers", where)
    if walk is not None and walk.answered and walk.at < len(walk.responses):
        order.after_answer = True
    return order


def _on_headers(walk: _Walk, facts: _RequestFacts, eos: bool, where: str) -> None:
    if not eos:
        # epp may refuse the request on its headers alone (a steering header that is no
        # model name, say); that answer is checked for sanity like every other.
        if walk.immediate_first() is None and facts.request_mode == BUFFERED:
            walk.take("request_headers", where)
        return
    expected: Expectation | None = None
    if facts.steering_clear and facts.subset_clear:
        if facts.method == "POST":
            expected = Expectation(statuses=frozenset({400}), code="missing_body")
        elif facts.method == "GET" and (facts.path is None or _models_api(facts.path)):
            # The pool's models, from epp itself: 503 only while no pod is ready yet. A
            # model by its id (anything the fuzzer made) is left undecided.
            if facts.path is not None and _models_api(facts.path) == "list":
                expected = Expectation(statuses=frozenset({200, 503}))
        elif facts.method in ("GET", "HEAD"):
            live = frozenset(walk.pool.pods)
            if facts.subset is not None:
                live &= facts.subset
            expected = (
                Expectation(destinations=live) if live else Expectation(statuses=frozenset({503}))
            )
    answer = walk.immediate_first() or walk.take("request_headers", where)
    walk.check_answer(answer, expected, f"{where} (request without a body)", None)


def _models_api(path: str) -> str | None:
    """``"list"`` for OpenAI's model list, ``"model"`` for one model by its id, else None."""
    path = path.partition("?")[0].partition("#")[0]
    if path in ("/v1/models", "/v1/models/"):
        return "list"
    return "model" if path.startswith("/v1/models/") else None


def _on_body_end(
    walk: _Walk, facts: _RequestFacts, body: bytes, *, by_trailers: bool, where: str
) -> None:
    expected = None
    if facts.steering_clear and facts.subset_clear:
        expected = expect_for_body(
            body, walk.pool, rewrite=facts.rewrite or None, subset=facts.subset
        )
    model = None
    if expected is not None and expected.routes:
        model = judge_body(body).model
    context = f"{where} (body of {len(body)} bytes {body[:60]!r})"
    answer = walk.immediate_first()
    if answer is not None:
        walk.check_answer(answer, expected, context, model)
        return
    if facts.request_mode == BUFFERED:
        answer = walk.take("request_body", context)
        walk.check_answer(answer, expected, context, model)
    else:
        answer = walk.take("request_headers", context)
        walk.check_answer(answer, expected, context, model)
        handed_back = bytearray()
        ended = False
        while True:
            response = walk.peek()
            if response is None or not response.HasField("request_body"):
                break
            streamed = response.request_body.response.body_mutation.streamed_response
            if not response.request_body.response.body_mutation.HasField("streamed_response"):
                walk.problems.append(
                    f"{context}: full-duplex body answer without streamed_response"
                )
            walk.at += 1
            handed_back += streamed.body
            if streamed.end_of_stream:
                ended = True
                break
        if ended == by_trailers:
            walk.problems.append(
                f"{context}: body handed back with end_of_stream={ended}, "
                f"but the request ended by "
                f"{'trailers' if by_trailers else 'end_of_stream'}"
            )
        if not facts.rewrite and bytes(handed_back) != body:
            walk.problems.append(
                f"{context}: body handed back differs: "
                f"{len(handed_back)} bytes {bytes(handed_back[:60])!r}"
            )
    if by_trailers:
        walk.take("request_trailers", context)


def _check_echo(
    walk: _Walk,
    facts: _RequestFacts,
    message: ProcessingRequest,
    echo: ProcessingResponse,
    where: str,
) -> None:
    if facts.response_mode != FULL_DUPLEX:
        return
    mutation = echo.response_body.response.body_mutation
    sent = message.response_body
    if (
        not mutation.HasField("streamed_response")
        or mutation.streamed_response.body != sent.body
        or mutation.streamed_response.end_of_stream != sent.end_of_stream
    ):
        walk.problems.append(
            f"{where}: response body chunk not echoed as sent "
            f"({len(sent.body)} bytes, eos={sent.end_of_stream})"
        )
