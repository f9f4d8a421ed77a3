"""Sending an ``HttpCase`` to Envoy over a raw socket, and judging the answer.

Per request, the properties are:

1. It ends: a response, or Envoy closing the connection, before the deadline (a
   request announcing more body than it sends is half-closed by the client first; a
   malformed one is half-closed after a moment of silence, since Envoy may wait for more).
2. No answer is a 500 with an empty body (what Envoy sends when its ext_proc fails).
3. An error answer not from a pod (no ``x-sim-pod``) to a well-formed request comes from
   epp, so it has an OpenAI-style body ``{"error": {"message", "type", "code"}}``. To a
   request RFC 9110 only tolerates, or a malformed one, Envoy may answer itself.
4. A well-formed request is answered as its body asks (``bodies.expect_for_body``):
   valid requests get 200 from a pod serving their model, with the body the client sent
   (``x-sim-body-sha256``) and the model header epp set (not the client's); the rest get
   the right 4xx/503 from epp, or reach a pod serving their model. ``GET /v1/models``
   gets 200 from epp itself: OpenAI's list of the models of the live pods.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from dataclasses import dataclass, field

from epp.requestcontrol.objectives import OBJECTIVE_HEADERS
from epp.requestcontrol.rewrite import MODEL_REWRITE_HEADERS
from tests.fuzz.bodies import Expectation, expect_for_body
from tests.fuzz.harness import Pool
from tests.fuzz.http_strategies import HttpCase

__all__ = ["HttpResponse", "HttpResult", "check_http", "parse_responses", "send_case"]

_MALFORMED_SILENCE_S = 0.3


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, bytes]  # lower-cased names; the last value of a repeated one
    body: bytes
    complete: bool

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value.decode(errors="replace") if value is not None else None


@dataclass
class HttpResult:
    case: HttpCase
    responses: list[HttpResponse] = field(default_factory=list)
    closed: bool = False  # Envoy closed (or reset) the connection
    hung: bool = False
    raw: bytes = b""

    @property
    def outcome(self) -> str:
        if self.hung:
            return "hang"
        if not self.responses or not self.responses[0].complete:
            return "closed without an answer"
        first = self.responses[0]
        source = (
            "pod"
            if first.header("x-sim-pod")
            else ("epp" if _openai_error(first.body) or _is_model_list(first.body) else "envoy")
        )
        return f"{first.status} from {source}"


def _decode_chunked(data: bytes, at: int) -> tuple[bytes, int, bool]:
    body = bytearray()
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            return bytes(body), at, False
        try:
            size = int(data[at:end].split(b";")[0].strip() or b"x", 16)
        except ValueError:
            return bytes(body), at, False
        at = end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n", at)
            while trailer_end > at:  # trailers, then an empty line
                at = trailer_end + 2
                trailer_end = data.find(b"\r\n", at)
            return bytes(body), (trailer_end + 2 if trailer_end >= 0 else at), trailer_end >= 0
        if len(data) < at + size + 2:
            return bytes(body + data[at:]), len(data), False
        body += data[at : at + size]
        at += size + 2


def parse_responses(data: bytes, *, head_request: bool, closed: bool) -> list[HttpResponse]:
    """The HTTP/1.1 responses in ``data``; the last may be incomplete."""
    responses: list[HttpResponse] = []
    at = 0
    while at < len(data):
        end = data.find(b"\r\n\r\n", at)
        if end < 0:
            responses.append(HttpResponse(-1, {}, b"", False))
            break
        lines = data[at:end].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
        headers: dict[str, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode(errors="replace")] = value.strip()
        at = end + 4
        if head_request or status in (204, 304) or 100 <= status < 200:
            responses.append(HttpResponse(status, headers, b"", True))
            continue
        if b"chunked" in headers.get("transfer-encoding", b"").lower():
            body, at, complete = _decode_chunked(data, at)
        elif "content-length" in headers and headers["content-length"].isdigit():
            length = int(headers["content-length"])
            body = data[at : at + length]
            complete = len(body) == length
            at += len(body)
        else:
            body, complete, at = data[at:], closed, len(data)
        responses.append(HttpResponse(status, headers, body, complete))
        if not complete:
            break
    return responses


def send_case(address: tuple[str, int], case: HttpCase, timeout_s: float) -> HttpResult:
    """Write the request, read until an answer (or Envoy's close); a deadline is a hang."""
    result = HttpResult(case)
    deadline = time.monotonic() + timeout_s
    with socket.create_connection(address, timeout=timeout_s) as sock:
        try:
            sock.sendall(case.data)
        except OSError:
            pass  # Envoy may answer and close before reading all of it
        half_closed = False
        if case.framing == "incomplete":
            _half_close(sock)
            half_closed = True
        data = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.hung = True
                break
            patient = case.framing != "malformed" or half_closed
            sock.settimeout(remaining if patient else min(remaining, _MALFORMED_SILENCE_S))
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                if not patient:
                    _half_close(sock)
                    half_closed = True
                    continue
                result.hung = True
                break
            except OSError:
                result.closed = True
                break
            if not chunk:
                result.closed = True
                break
            data += chunk
            if case.framing in ("strict", "lenient"):
                responses = parse_responses(
                    bytes(data), head_request=case.method == "HEAD", closed=False
                )
                if responses and responses[0].complete:
                    break
    result.raw = bytes(data)
    result.responses = parse_responses(
        result.raw, head_request=case.method == "HEAD", closed=result.closed
    )
    return result


def _half_close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _openai_error(body: bytes) -> tuple[str, str, str] | None:
    try:
        error = json.loads(body)["error"]
        fields = tuple(error[k] for k in ("message", "type", "code"))
    except (ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(f, str) for f in fields):
        return None
    return fields


def _case_headers(case: HttpCase) -> dict[str, list[bytes]]:
    head = case.data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    headers: dict[str, list[bytes]] = {}
    for line in head:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower().decode(errors="replace"), []).append(value.strip())
    return headers


def check_http(result: HttpResult, pool: Pool) -> list[str]:
    """Every property above that this request breaks, as readable sentences."""
    case = result.case
    problems = [
        f"500 with an empty body (response [{i}])"
        for i, r in enumerate(result.responses)
        if r.status == 500 and r.complete and not r.body
    ]
    if result.hung:
        return [
            *problems,
            f"hang: no answer within the deadline ({len(result.raw)} bytes "
            f"read: {result.raw[:200]!r})",
        ]
    first = result.responses[0] if result.responses else None
    if first is None or not first.complete:
        if case.framing == "strict":
            problems.append(
                f"Envoy closed the connection without an answer to a well-formed "
                f"request ({result.raw[:200]!r})"
            )
        return problems
    pod = first.header("x-sim-pod")
    error = _openai_error(first.body)
    if first.status >= 400 and pod is None and error is None:
        if case.framing == "strict":
            problems.append(
                f"{first.status} not from a pod and with no OpenAI error body, to "
                f"a well-formed request: {first.body[:200]!r}"
            )
        return problems  # Envoy's own answer to what it may refuse
    if case.framing not in ("strict", "lenient"):
        return problems
    return problems + _check_answer(case, first, pod, error, pool)


def _is_model_list(body: bytes) -> bool:
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("object") == "list"


def _model_list_problems(first: HttpResponse, pod: str | None, pool: Pool) -> list[str]:
    """epp's answer to ``GET /v1/models``: 200, not from a pod, the live pods' models."""
    if first.status != 200 or pod is not None:
        return [
            f"GET /v1/models got {first.status} from {pod or 'epp'}, expected 200 from epp: "
            f"{first.body[:200]!r}"
        ]
    try:
        document = json.loads(first.body)
        ids = {model["id"] for model in document["data"]}
    except (ValueError, KeyError, TypeError):
        return [f"GET /v1/models got no OpenAI model list: {first.body[:200]!r}"]
    live = set(pool.pods.values())
    if document.get("object") != "list" or not ids or not ids <= live:
        # A live pod may be missing while its scrape is late; the dead one's model never.
        return [f"GET /v1/models listed {sorted(ids)}, expected some of {sorted(live)}"]
    return []


def _check_answer(
    case: HttpCase,
    first: HttpResponse,
    pod: str | None,
    error: tuple[str, str, str] | None,
    pool: Pool,
) -> list[str]:
    headers = _case_headers(case)
    code = error[2] if error is not None else None
    if (
        error is not None
        and pod is None
        and first.status == 503
        and code in ("no_ready_endpoint", "overloaded")
    ):
        return []  # epp found no pod ready for now (late scrapes under load): clean
    if case.family == "valid-get":
        return _model_list_problems(first, pod, pool)
    if case.valid_model:
        serving = pool.pods if case.valid_model == "*" else pool.serving(case.valid_model)
        if first.status != 200 or pod not in serving:
            return [
                f"a valid request got {first.status} from {pod or 'not a pod'}, expected "
                f"200 from one of {sorted(serving)}: {first.body[:200]!r}"
            ]
        problems = []
        sha = first.header("x-sim-body-sha256")
        if sha is not None and sha != hashlib.sha256(case.body).hexdigest():
            problems.append(
                f"the pod got another body than the client sent "
                f"({first.header('x-sim-body-bytes')} bytes)"
            )
        model = first.header("x-sim-model-header")
        if case.valid_model != "*" and model is not None and model != case.valid_model:
            problems.append(
                f"the pod got x-gateway-model-name {model!r}, expected {case.valid_model!r}"
            )
        return problems
    steering = [
        v for name in (*OBJECTIVE_HEADERS, *MODEL_REWRITE_HEADERS) for v in headers.get(name, [])
    ]
    if case.framing == "lenient":
        if pod is not None or error is None:
            return []  # a pod's answer to an odd method or path; or a success
        if steering and first.status == 400:
            return []  # a steering header that is no name, refused
        return [f"epp refused a valid body with odd headers: {first.status} {error}"]
    if steering:
        return []  # the answer depends on settings of epp's; checked in the ext_proc target
    if not case.body:
        if case.method != "POST":
            return []
        expected: Expectation | None = Expectation(statuses=frozenset({400}), code="missing_body")
    else:
        expected = expect_for_body(case.body, pool, rewrite=None, subset=None)
    if expected is None:
        return []
    if expected.routes:
        if pod is None:
            return [
                f"expected a pod of {sorted(expected.destinations)}, got "
                f"{first.status} {error or first.body[:200]!r}"
            ]
        if pod not in expected.destinations:
            return [f"served by pod {pod}, expected one of {sorted(expected.destinations)}"]
        return []
    if pod is not None:
        return [
            f"expected {sorted(expected.statuses)} from epp, but pod {pod} answered {first.status}"
        ]
    if first.status not in expected.statuses:
        return [f"expected status {sorted(expected.statuses)}, got {first.status} {error}"]
    if expected.code is not None and code != expected.code:
        return [f"expected error code {expected.code!r}, got {code!r} ({first.status})"]
    return []
