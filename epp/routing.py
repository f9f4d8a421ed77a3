"""The contract between the ext_proc layer and request control.

A routed request carries a :class:`RoutingDecision` from the director to the stream that
asked for it, which fills in its :class:`ResponseOutcome` as the response passes and
hands it back when the stream ends; observability reads both. A request epp answers
itself (``GET /v1/models``) gets a :class:`LocalAnswer` instead. :class:`Router` is what
the stream needs of the director, so ``epp.extproc`` depends on this module, not on
``epp.director``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from epp.api.usage import Usage
from epp.datalayer.endpoint import Endpoint
from epp.scheduling.types import EndpointScores, LLMRequest

__all__ = ["LocalAnswer", "ResponseOutcome", "Router", "RoutingDecision"]


@dataclass(slots=True)
class ResponseOutcome:
    """What the response side of the stream showed; read when the request finishes."""

    status: int | None = None  # the upstream's HTTP status; None if no response headers came
    completed: bool = False  # the response reached its end (not reset, client still there)
    # time.monotonic() readings: the first token (the first response body byte; in a
    # Responses API stream, the first ".delta" event), and the response's end
    # (None: not seen; the body is seen only with response_body_mode FULL_DUPLEX_STREAMED).
    first_token_at: float | None = None
    ended_at: float | None = None
    # An SSE response (content-type text/event-stream; where Envoy skips response
    # headers, a request that asked to stream).
    streamed: bool = False
    body_bytes: int = 0  # response body bytes seen
    usage: Usage | None = None  # token counts, when the response reported them
    # The endpoint the gateway says served the response (ext_proc metadata envoy.lb /
    # x-gateway-destination-endpoint-served, or where Envoy skips response headers the
    # access log's upstream address), at most 256 characters: None when the response
    # headers carried no envoy.lb metadata, "" when it named no endpoint.
    served_endpoint: str | None = None


@dataclass(slots=True)
class RoutingDecision:
    """Where one request goes. ``Router.finish()`` must be called exactly once when it ends."""

    request: LLMRequest  # its model is the one sent upstream, after any rewrite
    endpoints: list[Endpoint]  # primary first, then fallbacks; empty: no endpoint picked
    destination: str  # the x-gateway-destination-endpoint value; "" when none picked
    candidates: int  # how many endpoints were eligible
    # The client's model, or the one chosen for it when it named the selector ("auto"):
    # differs from request.model if rewritten.
    requested_model: str = ""
    # The selector name the client sent ("auto") when epp chose the model; "" otherwise.
    selected_from: str = ""
    selection_rule: str = ""  # the rule that chose it (a configured rule's name, ...)
    priority: int = 0
    # x-llm-d-inference-fairness-id, as sent (bounded); "" when the request named none.
    fairness_id: str = ""
    response: ResponseOutcome = field(default_factory=ResponseOutcome)
    finished: bool = False
    fallback_from: str = ""  # the model that had no healthy endpoint; "" if none was needed
    health_generation: int = 0  # the primary endpoint's passive-health ticket at routing
    health_recorded: bool = False
    # Set on the client's response (a session token); plugins' text, never a client's.
    response_headers: tuple[tuple[str, str], ...] = ()
    # The candidates' scores, only when the request asked (the Pick API's include_scores).
    scores: tuple[EndpointScores, ...] = ()
    # A stream that asked for its usage (stream_options.include_usage).
    usage_asked: bool = False

    @property
    def model(self) -> str:
        """The model the client asked for (routes match on it; responses report it)."""
        return self.requested_model or self.request.model

    @property
    def target_model(self) -> str:
        return self.request.model

    @property
    def rewritten(self) -> bool:
        return bool(self.requested_model) and self.requested_model != self.request.model

    @property
    def body_model_changed(self) -> bool:
        """The body goes upstream with ``target_model`` in place of the client's model."""
        return bool(self.selected_from) or self.rewritten


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """A successful response epp gives itself, no endpoint involved (errors are
    ``EppError``s)."""

    status: int
    body: bytes
    content_type: str = "application/json"


class Router(Protocol):
    """What an ext_proc stream asks of request control (``epp.director.Director``).

    The routing calls raise an ``EppError`` the client should see.
    """

    def route_body(
        self,
        body: bytes | bytearray,
        *,
        request_id: str,
        headers: dict[str, str],
        subset: Sequence[str] | None = None,
        model: str | None = None,
        explain: bool = False,
    ) -> RoutingDecision:
        """Route a request with a JSON body. ``model``: named apart from the body, which
        then need not name it; ``explain``: keep the candidates' scores."""
        ...

    def local_answer(
        self, *, method: str, headers: dict[str, str], subset: Sequence[str] | None = None
    ) -> LocalAnswer | None:
        """The answer to a request that has no body, when request control gives it
        itself (the pool's models); ``None``: route it with :meth:`route_without_body`."""
        ...

    def route_without_body(
        self,
        *,
        method: str,
        request_id: str,
        headers: dict[str, str],
        subset: Sequence[str] | None = None,
    ) -> RoutingDecision:
        """Route a request that has no body (GET /health, a model list epp cannot give)."""
        ...

    def response_started(self, decision: RoutingDecision) -> None:
        """The response's headers came (``decision.response.status`` is set)."""
        ...

    def response_headers(self, decision: RoutingDecision) -> Sequence[tuple[str, str]]:
        """Headers to add to the response the client gets (after ``response_started``)."""
        ...

    def finish(self, decision: RoutingDecision) -> None:
        """The request's stream ended, however it ended; a second call does nothing."""
        ...
