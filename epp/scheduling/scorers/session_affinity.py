"""``session-affinity-scorer``: send a session's requests back to the endpoint it had.

The reference's default strategy, ``encoded_endpoint_header``, is stateless: the
response carries a header (``x-session-token`` unless ``encodedEndpointHeaderConfig.
header`` says otherwise) whose value is the base64 (standard alphabet, padded) of the
chosen endpoint's name; a client that sends it back on its next request gets 1.0 for
that endpoint and 0.0 everywhere else, a soft preference the other scorers can outweigh.
The name is the reference's, ``namespace/pod-rank-N`` on Kubernetes, so a token the
reference EPP issued for a pod still finds it; a static endpoint's name is its address.

The token is a client's bytes: one longer than :data:`MAX_TOKEN_CHARS`, or that is not
base64 of UTF-8, is ignored (no preference), and it is only ever compared, never logged
or echoed. The header epp sets is made from the endpoint's name alone.

Not implemented: the ``session_id`` strategy (a server-side table of client session ids)
and ``profileName`` (pinning a prefill pod in disaggregated serving); both fail start-up.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.types import (
    AffinityHint,
    CycleState,
    LLMRequest,
    ResponseHeaderWriter,
    Scorer,
    TypedName,
)

__all__ = ["DEFAULT_HEADER", "MAX_TOKEN_CHARS", "TYPE", "SessionAffinityScorer", "factory"]

TYPE = "session-affinity-scorer"
DEFAULT_HEADER = "x-session-token"
STRATEGY = "encoded_endpoint_header"
# A name is a namespace (63), "/", a pod name (253) and "-rank-N": base64 of that fits.
MAX_TOKEN_CHARS = 512


def encode_token(endpoint: Endpoint) -> str:
    """The token that names ``endpoint``."""
    return base64.b64encode(endpoint.identity.encode()).decode("ascii")


def decode_token(token: str | None) -> str | None:
    """The endpoint name in ``token``; None when it is absent, too long or malformed."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    try:
        return base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


class SessionAffinityScorer(NamedPlugin):
    """1.0 for the endpoint the request's session token names, 0.0 for the others; sets
    the chosen endpoint's token on the response."""

    __slots__ = ("_header",)

    TYPE = TYPE

    def __init__(self, name: str | None = None, *, header: str = DEFAULT_HEADER) -> None:
        super().__init__(name)
        # Request headers arrive lower-cased (HTTP/2, and Envoy for HTTP/1).
        self._header = header.strip().lower() or DEFAULT_HEADER

    @property
    def header(self) -> str:
        return self._header

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        wanted = decode_token(request.headers.get(self._header))
        if wanted is None:
            return [0.0] * len(endpoints)
        return [1.0 if ep.identity == wanted else 0.0 for ep in endpoints]

    def preferred(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Collection[Endpoint]:
        """The endpoint the session token names, if it is a candidate."""
        wanted = decode_token(request.headers.get(self._header))
        if wanted is None:
            return ()
        return [ep for ep in endpoints if ep.identity == wanted]

    def response_headers(
        self, cycle: CycleState, request: LLMRequest, chosen: Endpoint
    ) -> Sequence[tuple[str, str]]:
        return ((self._header, encode_token(chosen)),)


def factory(name: str, parameters: Mapping[str, Any]) -> SessionAffinityScorer:
    params = Params(TypedName(TYPE, name), parameters)
    strategy = params.get_str("strategy", STRATEGY)
    if strategy != STRATEGY:
        params.fail(
            "strategy",
            f"{strategy!r} is not supported by epp: only {STRATEGY!r} (the reference's "
            f"default: the endpoint travels in the {DEFAULT_HEADER} header)",
        )
    if params.get_str("profileName"):
        params.fail(
            "profileName",
            "pins a pod of another scheduling profile (prefill in disaggregated serving), "
            "which epp does not run; leave it out",
        )
    if params.get_raw("sessionIdConfig") is not None:
        params.fail("sessionIdConfig", f"belongs to the session_id strategy; use {STRATEGY!r}")
    header = DEFAULT_HEADER
    config = params.get_raw("encodedEndpointHeaderConfig")
    if config is not None:
        inner = Params(TypedName(TYPE, f"{name}.encodedEndpointHeaderConfig"), config)
        header = inner.get_str("header", DEFAULT_HEADER)
        inner.finish()
        if header and not _is_header_name(header):
            params.fail("encodedEndpointHeaderConfig", f"header {header!r} is no header name")
    params.finish()
    return SessionAffinityScorer(name, header=header)


def _is_header_name(name: str) -> bool:
    token_chars = "!#$%&'*+-.^_`|~"
    stripped = name.strip()
    return 0 < len(stripped) <= 128 and all(
        c.isascii() and (c.isalnum() or c in token_chars) for c in stripped
    )


_: type[Scorer] = SessionAffinityScorer
_writer: type[ResponseHeaderWriter] = SessionAffinityScorer
_hint: type[AffinityHint] = SessionAffinityScorer
