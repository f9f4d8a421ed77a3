"""The ``epp.v1.EndpointPicker`` gRPC service: epp's routing decision for callers that are
not Envoy (``proto/epp/v1/picker.proto`` is the contract).

``Pick`` routes through the same :class:`~epp.routing.Router` as an ext_proc stream, so
the same scheduler, endpoint table, prefix index and in-flight counts serve both; the
pick then waits in :class:`~epp.pickapi.ledger.OutstandingPicks` for its ``Finish``,
which plays the part of the ext_proc stream's response side and end: the response's
status feeds passive health, its timings and usage the same request metrics, and the
endpoint's in-flight count is released.

Everything in a ``PickRequest`` is the caller's and bounded before use: the body by
``max_body_bytes`` (and epp's body memory budget, as an ext_proc body), headers as Envoy
bounds an HTTP request's (100, 60 KiB in all), the subset hint's length, and the request
id (printable ASCII, at most 128 characters, else epp makes one).
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace

import grpc

from epp.api.usage import Usage
from epp.api.usage_injection import rewrite_request_body
from epp.errors import BadRequest, EppError, Overloaded, RequestTooLarge, ServiceUnavailable
from epp.extproc.body_budget import BodyBudget
from epp.observability import metrics, request_metrics
from epp.observability.logging import clip
from epp.pickapi.ledger import OutstandingPicks, PendingPick
from epp.routing import Router, RoutingDecision
from epp.v1 import picker_pb2, picker_pb2_grpc

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_SUBSET",
    "PickService",
    "grpc_status_of",
]

log = logging.getLogger(__name__)

# Envoy's defaults for an HTTP request (max_headers_count, max_request_headers_kb).
MAX_HEADERS = 100
MAX_HEADER_BYTES = 60 * 1024
MAX_SUBSET = 1024
_MAX_ENDPOINT_CHARS = 256
_REQUEST_ID = re.compile(r"[!-~]{1,128}")  # printable ASCII: it reaches logs and metadata
_RELEASE_LOG_INTERVAL_S = 60.0
_PICK_PATH = "/epp.v1.EndpointPicker/Pick"

# An HTTP status of epp's errors to its gRPC code (proto/epp/v1/picker.proto).
_GRPC_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    # The body as sent is refused: retrying it cannot help (RESOURCE_EXHAUSTED says
    # "later" here, as for a shed request).
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_status_of(error: EppError) -> grpc.StatusCode:
    """The gRPC code a Pick caller gets for ``error`` (INTERNAL for a status not mapped)."""
    return _GRPC_STATUS.get(error.status, grpc.StatusCode.INTERNAL)


def _trailers(error: EppError) -> tuple[tuple[str, str], ...]:
    trailers = [
        ("epp-error-status", str(error.status)),
        ("epp-error-type", error.error_type),
        ("epp-error-code", error.code),
    ]
    if error.retry_after_s is not None:
        trailers.append(("retry-after", str(error.retry_after_s)))
    if error.dropped_reason is not None:
        trailers.append(("x-llm-d-request-dropped-reason", error.dropped_reason))
    return tuple(trailers)


class PickService(picker_pb2_grpc.EndpointPickerServicer):
    """Pick and Finish over ``router``. Add it to a server with :meth:`add_to`."""

    def __init__(
        self,
        router: Router,
        *,
        max_body_bytes: int,
        timeout_s: float,
        max_outstanding: int,
        body_budget: BodyBudget | None = None,
    ) -> None:
        self._router = router
        self._max_body_bytes = max_body_bytes
        self._budget = body_budget or BodyBudget(0)
        self.outstanding = OutstandingPicks(
            timeout_s=timeout_s, max_outstanding=max_outstanding, release=self._release
        )
        self._released_logged_at = float("-inf")
        self._released_unlogged = 0

    def add_to(self, server: grpc.aio.Server) -> None:
        picker_pb2_grpc.add_EndpointPickerServicer_to_server(self, server)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.outstanding.close()

    async def Pick(
        self,
        request: picker_pb2.PickRequest,
        context: grpc.aio.ServicerContext[picker_pb2.PickRequest, picker_pb2.PickResponse],
    ) -> picker_pb2.PickResponse:
        received_at = time.monotonic()
        body = request.body
        request_id = ""
        try:
            headers = _bounded_headers(request.headers)
            request_id = self._request_id(headers)
            subset = _bounded_subset(request.subset)
            if len(body) > self._max_body_bytes:
                raise RequestTooLarge(f"request body is over {self._max_body_bytes} bytes")
            decision = self._route(request, body, request_id, headers, subset)
        except EppError as error:
            metrics.errors_for("", "", error.code).inc()
            request_metrics.record_finished(
                request_metrics.FinishedRequest(
                    request_id=request_id or "-",
                    received_at=received_at,
                    path=_PICK_PATH,
                    error=error,
                    request_bytes=len(body),
                    closed_at=time.monotonic(),
                )
            )
            await context.abort(grpc_status_of(error), error.message, _trailers(error))
            raise AssertionError("unreachable: abort raises") from None
        decision_s = time.monotonic() - received_at
        metrics.requests_for(
            decision.model, decision.target_model, decision.priority, decision.fairness_id
        ).inc()
        request_metrics.request_started(decision)
        response = _response(decision, request_id, body)
        # What waits for the Finish keeps no prompt, headers or scores: at the cap of
        # outstanding picks that would be megabytes each.
        decision.request = replace(decision.request, prompt="", headers={})
        decision.scores = ()
        self.outstanding.add(PendingPick(request_id, decision, received_at, len(body), decision_s))
        return response

    def _route(
        self,
        request: picker_pb2.PickRequest,
        body: bytes,
        request_id: str,
        headers: dict[str, str],
        subset: list[str] | None,
    ) -> RoutingDecision:
        if body and not self._budget.reserve(len(body)):
            raise Overloaded(
                "epp is receiving too many request bytes at once; retry shortly",
                retry_after_s=1,
            )
        try:
            decision = self._router.route_body(
                body,
                request_id=request_id,
                headers=headers,
                subset=subset,
                model=request.model or None,
                explain=request.include_scores,
            )
        finally:
            if body:
                self._budget.release(len(body))
        if not decision.endpoints:
            # Body-based routing: epp names the model and a later picker the endpoint.
            self._router.finish(decision)
            raise ServiceUnavailable(
                "epp picks no endpoints here (--body-based-routing)", code="no_endpoint_picking"
            )
        return decision

    async def Finish(
        self,
        request: picker_pb2.FinishRequest,
        context: grpc.aio.ServicerContext[picker_pb2.FinishRequest, picker_pb2.FinishResponse],
    ) -> picker_pb2.FinishResponse:
        problem = _finish_problem(request)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        pick = self.outstanding.take(request.request_id)
        if pick is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no unfinished pick has request id {clip(request.request_id)!r} (finished "
                "already, or released after --pick-timeout)",
            )
            raise AssertionError("unreachable: abort raises")
        now = time.monotonic()
        _read_outcome(pick, request, now)
        self._router.finish(pick.decision)
        self._record(pick, now)
        return picker_pb2.FinishResponse()

    def _request_id(self, headers: Mapping[str, str]) -> str:
        given = headers.get("x-request-id", "")
        if _REQUEST_ID.fullmatch(given) and given not in self.outstanding:
            return given
        return uuid.uuid4().hex

    def _release(self, pick: PendingPick, reason: str) -> None:
        """A pick given up on: as an ext_proc stream that ended before any response."""
        self._router.finish(pick.decision)
        self._record(pick, time.monotonic())
        metrics.PICKS_RELEASED.labels(reason).inc()
        now = time.monotonic()
        if now - self._released_logged_at < _RELEASE_LOG_INTERVAL_S:
            self._released_unlogged += 1
            return
        more = self._released_unlogged
        self._released_logged_at, self._released_unlogged = now, 0
        log.warning(
            "released pick %s on %s without a Finish (%s)%s: does its caller call Finish?",
            clip(pick.request_id),
            pick.decision.destination,
            reason,
            f"; {more} more since the last one logged" if more else "",
        )

    @staticmethod
    def _record(pick: PendingPick, closed_at: float) -> None:
        request_metrics.record_finished(
            request_metrics.FinishedRequest(
                request_id=pick.request_id,
                received_at=pick.received_at,
                path=_PICK_PATH,
                decision=pick.decision,
                request_bytes=pick.request_bytes,
                decision_s=pick.decision_s,
                closed_at=closed_at,
            )
        )


def _bounded_headers(given: Mapping[str, str]) -> dict[str, str]:
    if len(given) > MAX_HEADERS:
        raise BadRequest(
            f"{len(given)} headers; at most {MAX_HEADERS} are accepted", code="invalid_header"
        )
    size = 0
    headers: dict[str, str] = {}
    for key, value in given.items():
        size += len(key) + len(value)
        if size > MAX_HEADER_BYTES:
            raise BadRequest(
                f"headers are over {MAX_HEADER_BYTES} characters in all", code="invalid_header"
            )
        headers[key.lower()] = value
    return headers


def _bounded_subset(subset: Sequence[str]) -> list[str] | None:
    if not subset:
        return None
    if len(subset) > MAX_SUBSET:
        raise BadRequest(f"subset names {len(subset)} endpoints; at most {MAX_SUBSET}")
    if any(len(address) > _MAX_ENDPOINT_CHARS for address in subset):
        raise BadRequest(f"a subset endpoint is over {_MAX_ENDPOINT_CHARS} characters")
    return list(subset)


def _response(decision: RoutingDecision, request_id: str, body: bytes) -> picker_pb2.PickResponse:
    response = picker_pb2.PickResponse(
        endpoint=decision.endpoints[0].address,
        fallback_endpoints=[ep.address for ep in decision.endpoints[1:]],
        model=decision.target_model,
        request_id=request_id,
        response_headers=dict(decision.response_headers),
    )
    if decision.body_model_changed and body:
        response.body = bytes(rewrite_request_body(body, model=decision.target_model)[0])
    for explained in decision.scores:
        response.scores.append(
            picker_pb2.EndpointScore(
                endpoint=explained.endpoint.address,
                total=explained.total,
                scorers=dict(explained.by_scorer),
            )
        )
    return response


def _finish_problem(request: picker_pb2.FinishRequest) -> str | None:
    if request.status and not 100 <= request.status <= 599:
        return f"status {request.status} is no HTTP status (0: no response came)"
    for field in ("time_to_first_token_s", "duration_s"):
        if request.HasField(field):
            value = getattr(request, field)
            if not (math.isfinite(value) and value >= 0):
                return f"{field} must be a finite number of seconds >= 0, not {value!r}"
    return None


def _read_outcome(pick: PendingPick, request: picker_pb2.FinishRequest, now: float) -> None:
    """What the caller saw of the response, into the decision's outcome. Times are
    bounded by the time the pick really was out: a caller's clock cannot stretch them."""
    response = pick.decision.response
    start = pick.received_at
    elapsed = now - start
    if request.status:
        response.status = request.status
    response.streamed = request.streamed
    response.body_bytes = request.response_bytes
    if request.HasField("time_to_first_token_s"):
        response.first_token_at = start + min(request.time_to_first_token_s, elapsed)
    if request.status and request.completed:
        response.completed = True
        response.ended_at = (
            start + min(request.duration_s, elapsed) if request.HasField("duration_s") else now
        )
    if request.prompt_tokens or request.completion_tokens:
        response.usage = Usage(
            prompt_tokens=request.prompt_tokens,
            completion_tokens=request.completion_tokens,
            cached_tokens=request.cached_tokens if request.HasField("cached_tokens") else None,
        )
