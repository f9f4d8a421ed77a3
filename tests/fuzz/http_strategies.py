"""Hypothesis strategies for raw HTTP/1.1 requests sent through Envoy to epp.

A request is an ``HttpCase``: the bytes to write, and what the suite knows of them:

- ``strict``: well-formed HTTP/1.1 that Envoy must hand to epp (tokens for names,
  visible ASCII for values, a Host, a framing that adds up). Valid requests (a served
  model, a well-formed body) and requests with any body at all: empty, blank, broken
  JSON, odd model names (long, control characters, unicode, not strings), deep nesting,
  huge numbers, wrong types; by Content-Length or chunked (empty chunked bodies too).
- ``lenient``: what RFC 9110 tolerates but a proxy may refuse: obs-text and non-UTF-8
  bytes in header values, odd methods and paths, tabs in values.
- ``malformed``: broken framing: bad chunk sizes, Content-Length mismatches, both
  Content-Length and Transfer-Encoding, invalid header names, NUL, bare LF, obs-fold,
  oversized headers, garbage request lines.
- ``incomplete``: a body shorter than announced; the client half-closes after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from tests.fuzz.bodies import rare, request_bodies, valid_request_bodies
from tests.fuzz.harness import GEMMA

__all__ = ["HTTP_POOL_SLOTS", "HttpCase", "http_cases", "probe_cases", "strict_bodies"]

# Stand-ins for the pool's addresses: the live pods in order, then the dead endpoint.
HTTP_POOL_SLOTS = (b"{pod0}", b"{pod1}", b"{pod2}", b"{dead0}")


@dataclass(frozen=True)
class HttpCase:
    data: bytes
    framing: str  # strict | lenient | malformed | incomplete
    method: str
    body: bytes  # the body as the upstream should get it (chunking undone)
    valid_model: str = ""  # set for a request that must get 200 from a pod serving it
    family: str = ""

    def __repr__(self) -> str:
        shown = (
            self.data
            if len(self.data) <= 600
            else (self.data[:400] + b"...(%d bytes)..." % (len(self.data) - 600) + self.data[-200:])
        )
        return (
            f"HttpCase({self.family}, {self.framing}, valid_model={self.valid_model!r}):\n"
            f"  {shown!r}"
        )

    def resolved(self, addresses: dict[bytes, bytes]) -> HttpCase:
        data = self.data
        for slot, address in addresses.items():
            data = data.replace(slot, address)
        return HttpCase(data, self.framing, self.method, self.body, self.valid_model, self.family)


_TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-._~/?=&%+"

_benign_headers = st.lists(
    st.tuples(
        st.text(_TOKEN, min_size=1, max_size=20).map(lambda n: b"x-fuzz-" + n.encode()),
        st.text(_VCHAR + " ", max_size=40).map(lambda v: v.strip().encode()),
    ),
    max_size=4,
)
_steering = st.sampled_from(
    [
        (b"x-gateway-destination-endpoint", b"{pod2}"),  # a client naming a pod itself
        (b"x-gateway-destination-endpoint", b"127.0.0.1:1"),
        (b"x-gateway-destination-endpoint", b"{dead0}"),
        (b"x-gateway-model-name", GEMMA.encode()),
        (b"x-gateway-model-name-rewrite", GEMMA.encode()),
        (b"x-gateway-model-name-rewrite", b"unknown-model"),
        (b"x-gateway-inference-objective", b"batch"),
    ]
)


def _chunked(body: bytes, cuts: list[int], *, extensions: bool = False) -> bytes:
    pieces, start = [], 0
    for cut in [*sorted({c for c in cuts if 0 < c < len(body)}), len(body)]:
        if cut > start:
            pieces.append(body[start:cut])
        start = cut
    out = b"".join(
        b"%x%s\r\n%s\r\n" % (len(p), b";ext=1" if extensions else b"", p) for p in pieces
    )
    return out + b"0\r\n\r\n"


def _request(
    method: bytes,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None,
    framing: str,
    cuts: list[int],
) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (method, path), b"host: gateway.local"]
    lines += [name + b": " + value for name, value in headers]
    if body is None:
        payload = b""
    elif framing == "chunked":
        lines.append(b"transfer-encoding: chunked")
        payload = _chunked(body, cuts)
    else:
        lines.append(b"content-length: %d" % len(body))
        payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


@st.composite
def valid_cases(draw: st.DrawFn) -> HttpCase:
    """Requests that must get 200: from a pod, a served model; GET /v1/models, from epp."""
    headers = draw(_benign_headers)
    if draw(st.integers(0, 5)) == 0:
        data = _request(b"GET", b"/v1/models", headers, None, "", [])
        return HttpCase(data, "strict", "GET", b"", valid_model="*", family="valid-get")
    body, model, path = draw(valid_request_bodies())
    headers.append((b"content-type", b"application/json"))
    if draw(st.integers(0, 3)) == 0:
        headers.append(draw(_steering.filter(lambda h: b"rewrite" not in h[0])))
    framing = draw(st.sampled_from(["length", "chunked"]))
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=4))
    data = _request(b"POST", path.encode(), headers, body, framing, cuts)
    return HttpCase(data, "strict", "POST", body, valid_model=model, family="valid")


@st.composite
def strict_bodies(draw: st.DrawFn) -> HttpCase:
    """Well-formed HTTP carrying any body at all, to any OpenAI path."""
    body = draw(request_bodies())
    headers = draw(_benign_headers)
    if draw(st.integers(0, 4)):
        headers.append((b"content-type", b"application/json"))
    if draw(st.integers(0, 5)) == 0:
        headers.append(draw(_steering))
    method = draw(st.sampled_from([b"POST", b"POST", b"POST", b"PUT", b"GET"]))
    path = draw(
        st.sampled_from(
            [b"/v1/chat/completions", b"/v1/completions", b"/v1/responses", b"/v1/embeddings"]
        )
    )
    framing = draw(st.sampled_from(["length", "chunked"]))
    if len(body) > 8_000_000:
        framing = "length"
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=4))
    data = _request(method, path, headers, body, framing, cuts)
    return HttpCase(data, "strict", method.decode(), body, family=f"body-{framing}")


_odd_values = st.one_of(
    st.binary(min_size=1, max_size=30).map(
        lambda b: bytes(c for c in b if c not in b"\r\n\x00") or b"x"
    ),
    st.sampled_from(
        [b"caf\xe9", b"\xff\xfe", b"\xc3\x28", b"a\tb", b"\x80\x81", "🦙".encode(), b"\x7f"]
    ),
)


@st.composite
def lenient_cases(draw: st.DrawFn) -> HttpCase:
    """Well-framed requests with bytes RFC 9110 only tolerates, and odd methods and paths."""
    body, _, api_path = draw(valid_request_bodies())
    names = st.one_of(
        st.sampled_from(
            [
                b"x-odd",
                b"user-agent",
                b"x-request-id",
                b"x-gateway-inference-objective",
                b"x-gateway-model-name-rewrite",
                b"x-session-token",
            ]
        ),
        st.text(_TOKEN, min_size=1, max_size=12).map(str.encode),
    )
    headers = draw(st.lists(st.tuples(names, _odd_values), min_size=1, max_size=4))
    method = draw(
        st.one_of(
            st.sampled_from([b"POST", b"PATCH", b"OPTIONS", b"DELETE"]),
            st.text(_TOKEN, min_size=1, max_size=8).map(str.encode),
        )
    )
    path = draw(
        st.one_of(
            st.just(api_path.encode()),
            st.text(_PATH_CHARS, max_size=40).map(lambda p: b"/" + p.encode()),
            st.sampled_from(
                [
                    b"/v1/chat/completions?%ff=%00",
                    b"//v1//models",
                    b"/v1/../v1/completions",
                    b"/%7e%2F",
                ]
            ),
        )
    )
    data = _request(
        method,
        path,
        headers,
        body,
        draw(st.sampled_from(["length", "chunked"])),
        draw(st.lists(st.integers(0, len(body)), max_size=3)),
    )
    return HttpCase(data, "lenient", method.decode(errors="replace"), body, family="lenient")


@st.composite
def malformed_cases(draw: st.DrawFn) -> HttpCase:
    """Broken HTTP/1.1: Envoy may answer 4xx or close the connection."""
    body, _, path = draw(valid_request_bodies())
    head = b"POST " + path.encode() + b" HTTP/1.1\r\nhost: gateway.local\r\n"
    kind = draw(
        st.sampled_from(
            [
                "bad_chunk_size",
                "chunk_size_mismatch",
                "cl_shorter",
                "cl_and_te",
                "two_cl",
                "bad_header_name",
                "nul_in_value",
                "bare_lf",
                "obs_fold",
                "huge_header",
                "garbage_line",
                "negative_cl",
                "te_unknown",
                "no_host",
                "http10",
                "many_headers",
                "cr_in_value",
                "space_before_colon",
                "random",
            ]
        )
    )
    framing = "malformed"
    if kind == "bad_chunk_size":
        size = draw(st.sampled_from([b"zz", b"-1", b"ffffffffffffffffff", b" 5", b"5 ;x", b""]))
        data = (
            head + b"transfer-encoding: chunked\r\n\r\n" + size + b"\r\n" + body + b"\r\n0\r\n\r\n"
        )
    elif kind == "chunk_size_mismatch":
        delta = draw(st.integers(-5, 5).filter(bool))
        data = (
            head
            + b"transfer-encoding: chunked\r\n\r\n%x\r\n" % max(0, len(body) + delta)
            + body
            + b"\r\n0\r\n\r\n"
        )
        framing = "incomplete" if delta > 0 else "malformed"
    elif kind == "cl_shorter":
        data = head + b"content-length: %d\r\n\r\n" % (len(body) // 2) + body
    elif kind == "cl_and_te":
        data = (
            head
            + b"content-length: %d\r\ntransfer-encoding: chunked\r\n\r\n" % len(body)
            + _chunked(body, [])
        )
    elif kind == "two_cl":
        data = (
            head
            + b"content-length: %d\r\ncontent-length: %d\r\n\r\n" % (len(body), len(body) + 1)
            + body
        )
    elif kind == "bad_header_name":
        name = draw(st.sampled_from([b"x y", b"x(y)", b"\xff\xfe", b"", b"x\x01", b'"q"']))
        data = head + name + b": v\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    elif kind == "nul_in_value":
        data = head + b"x-a: a\x00b\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    elif kind == "cr_in_value":
        data = head + b"x-a: a\rb\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    elif kind == "space_before_colon":
        data = head + b"content-length : %d\r\n\r\n" % len(body) + body
    elif kind == "bare_lf":
        data = (head + b"content-length: %d\r\n\r\n" % len(body)).replace(b"\r\n", b"\n") + body
    elif kind == "obs_fold":
        data = head + b"x-a: a\r\n  folded\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    elif kind == "huge_header":
        length = draw(st.integers(61_000, 300_000))
        data = (
            head + b"x-a: " + b"a" * length + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        )
    elif kind == "many_headers":
        count = draw(st.integers(101, 2_000))
        data = (
            head
            + b"".join(b"x-h%d: v\r\n" % i for i in range(count))
            + b"content-length: %d\r\n\r\n" % len(body)
            + body
        )
    elif kind == "garbage_line":
        line = draw(
            st.sampled_from(
                [
                    b"POST\r\n",
                    b"GET / HTTP/9.9\r\n",
                    b"PRI * HTTP/2.0\r\n",
                    b"\x16\x03\x01\x02\x00\r\n",
                    b"GET /\r\n",
                    b" / HTTP/1.1\r\n",
                ]
            )
        )
        data = line + b"host: x\r\n\r\n"
    elif kind == "negative_cl":
        data = head + b"content-length: -5\r\n\r\n" + body
    elif kind == "te_unknown":
        data = head + b"transfer-encoding: gzip, chunked, br\r\n\r\n" + _chunked(body, [])
    elif kind == "no_host":
        data = (
            b"POST " + path.encode() + b" HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        )
        framing = "lenient"
    elif kind == "http10":
        data = (
            b"POST " + path.encode() + b" HTTP/1.0\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        )
        framing = "lenient"
    else:
        data = draw(st.binary(min_size=1, max_size=200))
    return HttpCase(data, framing, "POST", body, family=f"malformed-{kind}")


@st.composite
def incomplete_cases(draw: st.DrawFn) -> HttpCase:
    body, _, path = draw(valid_request_bodies())
    head = b"POST " + path.encode() + b" HTTP/1.1\r\nhost: gateway.local\r\n"
    if draw(st.booleans()):
        missing = draw(st.integers(1, 10**6))
        data = head + b"content-length: %d\r\n\r\n" % (len(body) + missing) + body
    else:
        data = head + b"transfer-encoding: chunked\r\n\r\n" + _chunked(body, [])[:-5]
    return HttpCase(data, "incomplete", "POST", body, family="incomplete")


def http_cases() -> st.SearchStrategy[HttpCase]:
    return st.one_of(
        valid_cases(),
        strict_bodies(),
        strict_bodies(),
        lenient_cases(),
        rare(incomplete_cases(), malformed_cases(), one_in=4),
    )


@st.composite
def probe_cases(draw: st.DrawFn) -> HttpCase:
    body, model, path = draw(valid_request_bodies())
    data = _request(
        b"POST", path.encode(), [(b"content-type", b"application/json")], body, "length", []
    )
    return HttpCase(data, "strict", "POST", body, valid_model=model, family="probe")
