"""A typed asyncio client of epp's Pick API (``epp.v1.EndpointPicker``), for a proxy,
gateway or batch runner that sends requests to model servers itself.

    async with PickClient("127.0.0.1:9002") as epp:
        picked = await epp.pick(body, headers={"x-request-id": "r1"})
        ...  # send picked.body or body to http://{picked.endpoint}
        await epp.finish(picked.request_id, status=200, completion_tokens=42)

Every pick must be finished (``finish``, with whatever status the request ended with; 0
when no response came): until then epp counts it as in flight on its endpoint. epp
releases a pick never finished after its ``--pick-timeout``.

Errors are :class:`PickError`, which carries the HTTP status and OpenAI error fields epp
would have answered an HTTP client with, so a proxy can pass them on unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc

from epp.v1 import picker_pb2, picker_pb2_grpc

__all__ = ["EndpointScore", "PickClient", "PickError", "Picked"]

# The HTTP status of a gRPC code, when epp's trailers do not say (grpc's own errors:
# epp unreachable, a message over the server's limit).
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


@dataclass(frozen=True, slots=True)
class EndpointScore:
    """A candidate's total and each scorer's weighted share of it (``include_scores``)."""

    endpoint: str
    total: float
    scorers: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Picked:
    """Where to send one request. ``body``: what to send instead of the caller's body,
    when epp changed it (a model rewrite); None to send the body as it was."""

    request_id: str
    endpoint: str  # "ip:port"
    model: str  # the model to ask the endpoint for
    fallback_endpoints: tuple[str, ...] = ()
    body: bytes | None = None
    response_headers: Mapping[str, str] = field(default_factory=dict)
    scores: tuple[EndpointScore, ...] = ()


class PickError(Exception):
    """epp refused the pick (or could not be reached): ``status`` is the HTTP status an
    HTTP client would have got, ``error_type`` and ``code`` OpenAI's error fields."""

    def __init__(
        self,
        message: str,
        *,
        grpc_code: grpc.StatusCode,
        status: int,
        error_type: str = "",
        code: str = "",
        retry_after_s: int | None = None,
        dropped_reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.grpc_code = grpc_code
        self.status = status
        self.error_type = error_type
        self.code = code
        self.retry_after_s = retry_after_s
        self.dropped_reason = dropped_reason

    def openai_body(self) -> bytes:
        """The error as an OpenAI-style JSON body, as epp answers HTTP clients."""
        error = {"message": self.message, "type": self.error_type, "param": None, "code": self.code}
        return json.dumps({"error": error}).encode()

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> PickError:
        trailers = {key: value for key, value in error.trailing_metadata() or ()}
        code = error.code()
        status = trailers.get("epp-error-status", "")
        retry_after = trailers.get("retry-after", "")
        return cls(
            error.details() or code.name,
            grpc_code=code,
            status=int(status) if status.isdigit() else _HTTP_STATUS.get(code, 500),
            error_type=trailers.get("epp-error-type", ""),
            code=trailers.get("epp-error-code", code.name.lower()),
            retry_after_s=int(retry_after) if retry_after.isdigit() else None,
            dropped_reason=trailers.get("x-llm-d-request-dropped-reason"),
        )


class PickClient:
    """One gRPC channel to epp; use as an async context manager, or call :meth:`close`.

    ``target``: epp's ext_proc address (``host:port``). ``credentials``: for an epp that
    serves TLS (``--secure-serving``); None connects in plaintext.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        # A rewritten body comes back whole: no 4 MiB cap on what epp answers.
        channel_options = [("grpc.max_receive_message_length", -1), *options]
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=channel_options)
        self._stub = picker_pb2_grpc.EndpointPickerStub(self._channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> PickClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def pick(
        self,
        body: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        model: str | None = None,
        include_scores: bool = False,
        subset: Sequence[str] = (),
        timeout_s: float | None = 10.0,
    ) -> Picked:
        """Where ``body`` (an OpenAI-style JSON request) should go. ``model``: route for
        it without reading the body's (the body may then be empty). Raises
        :class:`PickError`."""
        request = picker_pb2.PickRequest(
            body=body,
            headers=dict(headers or {}),
            model=model or "",
            include_scores=include_scores,
            subset=list(subset),
        )
        try:
            response: picker_pb2.PickResponse = await self._stub.Pick(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            raise PickError.of(error) from error
        return Picked(
            request_id=response.request_id,
            endpoint=response.endpoint,
            model=response.model,
            fallback_endpoints=tuple(response.fallback_endpoints),
            body=response.body or None,
            response_headers=dict(response.response_headers),
            scores=tuple(
                EndpointScore(score.endpoint, score.total, dict(score.scorers))
                for score in response.scores
            ),
        )

    async def finish(
        self,
        request_id: str,
        *,
        status: int,
        completed: bool = True,
        streamed: bool = False,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cached_tokens: int | None = None,
        time_to_first_token_s: float | None = None,
        duration_s: float | None = None,
        response_bytes: int = 0,
        timeout_s: float | None = 10.0,
    ) -> None:
        """The request of ``request_id`` ended: ``status`` is the model server's HTTP
        status (0: no response came), ``completed`` whether the response reached its
        end. Times are seconds from the pick. Raises :class:`PickError` (NOT_FOUND: no
        such pick is unfinished)."""
        request = picker_pb2.FinishRequest(
            request_id=request_id,
            status=status,
            completed=completed,
            streamed=streamed,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            response_bytes=response_bytes,
        )
        if cached_tokens is not None:
            request.cached_tokens = cached_tokens
        if time_to_first_token_s is not None:
            request.time_to_first_token_s = time_to_first_token_s
        if duration_s is not None:
            request.duration_s = duration_s
        try:
            await self._stub.Finish(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            raise PickError.of(error) from error
