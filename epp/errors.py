"""Errors epp answers a request with, each tied to the HTTP status the client sees.

    EppError                    any failure epp turns into an HTTP answer itself
    ├── BadRequest        400   the body is not JSON, not an object, or lacks "model"
    ├── ModelNotFound     404   no endpoint serves the model
    ├── RequestTooLarge   413   the body is larger than epp will gather
    ├── TooManyRequests   429   shed or no capacity
    ├── ServiceUnavailable 503  endpoints exist for the model but none is ready
    └── Overloaded        503   epp holds as many request bytes as its budget allows

The ext_proc layer maps an ``EppError`` to an Envoy ``ImmediateResponse`` with an
OpenAI-style JSON body; any other exception is a bug and becomes a gRPC error on that one
stream only.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "EppError",
    "ModelNotFound",
    "Overloaded",
    "RequestTooLarge",
    "ServiceUnavailable",
    "TooManyRequests",
]


class EppError(Exception):
    """A request epp answers itself, with ``status`` and an OpenAI-style error body."""

    status: int = 500
    error_type: str = "internal_error"  # OpenAI's error.type
    code: str = "internal_error"  # OpenAI's error.code
    # For a request refused for want of capacity or endpoints (not for what it asked):
    # the reference EPP's x-llm-d-request-dropped-reason value, which clients and
    # gateways branch on.
    dropped_reason: str | None = None

    def __init__(
        self, message: str, *, code: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        # Sent as the answer's retry-after header (whole seconds) when set: a 429 says when
        # the pool may have room again.
        self.retry_after_s = retry_after_s


class BadRequest(EppError):
    """The request body cannot be routed as given."""

    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class ModelNotFound(EppError):
    """No endpoint serves the requested model."""

    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class RequestTooLarge(EppError):
    """The body is over the configured limit."""

    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class TooManyRequests(EppError):
    """The pool has no room for this request now."""

    status = 429
    error_type = "rate_limit_error"
    code = "no_capacity"
    dropped_reason = "rejected-saturated"


class ServiceUnavailable(EppError):
    """Endpoints serve the model, but none is ready."""

    status = 503
    error_type = "service_unavailable"
    code = "no_ready_endpoint"
    dropped_reason = "rejected-no-endpoints"


class Overloaded(EppError):
    """epp itself has no room for this request now (its body memory budget is spent)."""

    status = 503
    error_type = "service_unavailable"
    code = "overloaded"
    dropped_reason = "rejected-saturated"
