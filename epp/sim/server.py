"""The HTTP face of one simulated pod: an aiohttp app speaking vLLM's OpenAI-compatible API.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (JSON, or SSE with
``"stream": true``), ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health``,
``GET /metrics``, and for tests ``GET|DELETE /sim/requests`` (the last 256 requests
received) and ``GET /sim/state`` (the engine's counters as JSON).

Every response carries ``x-sim-pod`` (the pod's name) and, so tests can check what the
proxy delivered, ``x-sim-body-sha256`` / ``x-sim-body-bytes`` of the raw request body and
``x-sim-model-header`` (the received ``x-gateway-model-name``, or "").

Errors use vLLM's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a
body that is not a JSON object or misses its prompt, 404 for a model the pod does not
serve. A request without ``model`` goes to the pod's first model, as in vLLM.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import xxhash
from aiohttp import web

from epp.sim.engine import SimEngine
from epp.sim.metrics import CONTENT_TYPE, MetricsRenderer

__all__ = ["MAX_BODY_BYTES", "REQUEST_LOG_SIZE", "create_app"]

MAX_BODY_BYTES = 64 * 1024 * 1024
REQUEST_LOG_SIZE = 256
EMBEDDING_DIMENSIONS = 8
# Scrapes and probes would flush real traffic out of the bounded request log.
_UNLOGGED_PATHS = ("/metrics", "/health", "/sim/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _ApiError(Exception):
    """An OpenAI-style error response, raised from request validation."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    413: "RequestEntityTooLarge",
}


@dataclass(frozen=True, slots=True)
class _Received:
    body: bytes
    sha256: str
    model_header: str


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _error_response(status: int, message: str, param: str | None = None) -> web.Response:
    payload = {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "Error"),
            "param": param,
            "code": status,
        }
    }
    return web.Response(status=status, body=_dumps(payload), content_type="application/json")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise _ApiError(400, f"invalid JSON body: {exc}") from exc
    if not isinstance(obj, dict):
        raise _ApiError(400, "the request body must be a JSON object")
    return obj


def _chat_prompt(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _ApiError(400, "'messages' must be a non-empty list", "messages")
    parts: list[str] = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise _ApiError(400, "each message must be an object", "messages")
        content = msg.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            # Non-text parts (images, audio) carry no prompt text for the cache.
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise _ApiError(400, "a text part needs a string 'text'", "messages")
                    parts.append(text)
        elif content is not None:
            raise _ApiError(400, "message content must be a string or a list", "messages")
    return "".join(parts)


def _is_token_ids(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    )


def _completion_prompt(body: dict[str, Any]) -> str | list[int]:
    prompt = body.get("prompt")
    # A one-element batch is common client behaviour; real batches would need n choices.
    if isinstance(prompt, list) and len(prompt) == 1 and not _is_token_ids(prompt):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if _is_token_ids(prompt) and prompt:
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise _ApiError(400, "the simulator does not support batched prompts", "prompt")
    raise _ApiError(400, "'prompt' must be a string or a list of token ids", "prompt")


def _embedding_inputs(body: dict[str, Any]) -> list[str | list[int]]:
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if _is_token_ids(value) and value:
        return [list(value)]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(_is_token_ids(v) and v for v in value):
            return [list(v) for v in value]
    raise _ApiError(400, "'input' must be a string, a list of strings or token ids", "input")


def _embedding(item: str | list[int]) -> list[float]:
    data = item.encode() if isinstance(item, str) else _dumps(item)
    raw = [xxhash.xxh64_intdigest(data, seed=d) / 2**63 - 1.0 for d in range(EMBEDDING_DIMENSIONS)]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [x / norm for x in raw]


def _positive_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _ApiError(400, f"'{key}' must be a positive integer", key)
    return value


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


class _Pod:
    """Handlers and per-pod state; one instance per ``web.Application``."""

    def __init__(self, engine: SimEngine, models: Sequence[str], name: str) -> None:
        self.engine = engine
        self.models = tuple(models)
        self.name = name
        self.metrics = MetricsRenderer(engine, self.models)
        self.log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        # Keyed by id(request): aiohttp requests are unhashable, and this lives only
        # while the middleware runs.
        self._received: dict[int, _Received] = {}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            resp: web.StreamResponse = _error_response(413, "request body too large")
            self._stamp_pod(resp)
            return resp
        received = _Received(
            body=body,
            sha256=hashlib.sha256(body).hexdigest(),
            model_header=request.headers.get("x-gateway-model-name", ""),
        )
        if not request.path.startswith(_UNLOGGED_PATHS):
            headers: dict[str, str] = {}
            for key, value in request.headers.items():
                k = key.lower()
                headers[k] = f"{headers[k]},{value}" if k in headers else value
            self.log.append(
                {
                    "method": request.method,
                    "path": request.path_qs,
                    "headers": headers,
                    "body_sha256": received.sha256,
                    "body_bytes": len(body),
                }
            )
        self._received[id(request)] = received
        try:
            try:
                resp = await handler(request)
            except _ApiError as exc:
                resp = _error_response(exc.status, exc.message, exc.param)
            except web.HTTPException as exc:
                resp = _error_response(exc.status, exc.reason)
            if not resp.prepared:
                self.stamp(request, resp)
            return resp
        finally:
            del self._received[id(request)]

    def stamp(self, request: web.Request, resp: web.StreamResponse) -> None:
        """Add the ``x-sim-*`` headers; call before a streaming response is prepared."""
        received = self._received[id(request)]
        self._stamp_pod(resp)
        resp.headers["x-sim-body-sha256"] = received.sha256
        resp.headers["x-sim-body-bytes"] = str(len(received.body))
        resp.headers["x-sim-model-header"] = received.model_header

    def _stamp_pod(self, resp: web.StreamResponse) -> None:
        resp.headers["x-sim-pod"] = self.name

    def _body(self, request: web.Request) -> dict[str, Any]:
        return _json_object(self._received[id(request)].body)

    def _model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if model is None:
            return self.models[0]
        if not isinstance(model, str):
            raise _ApiError(400, "'model' must be a string", "model")
        if model not in self.models:
            raise _ApiError(404, f"The model `{model}` does not exist.", "model")
        return model

    def _max_tokens(self, body: dict[str, Any]) -> int:
        for key in ("max_completion_tokens", "max_tokens"):
            value = _positive_int(body, key)
            if value is not None:
                return value
        return self.engine.config.default_max_tokens

    @staticmethod
    def _streaming(body: dict[str, Any]) -> tuple[bool, bool]:
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise _ApiError(400, "'stream' must be a boolean", "stream")
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return stream, include_usage

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body = self._body(request)
        model = self._model(body)
        prompt: str | list[int] = _chat_prompt(body) if chat else _completion_prompt(body)
        max_tokens = self._max_tokens(body)
        stream, include_usage = self._streaming(body)
        rid = f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not stream:
            async with self.engine.run(prompt, model=model, max_tokens=max_tokens) as gen:
                text = "".join([piece async for piece in gen.tokens()])
            choice: dict[str, Any] = {"index": 0}
            if chat:
                choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
            else:
                choice["text"] = text
            choice.update(logprobs=None, finish_reason="length", stop_reason=None)
            payload = {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": _usage(gen.prompt_tokens, gen.completion_tokens, gen.cached_tokens),
            }
            return web.Response(body=_dumps(payload), content_type="application/json")

        resp = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
            }
        )
        self.stamp(request, resp)
        # Headers go out before admission, as with vLLM's StreamingResponse.
        await resp.prepare(request)
        head: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }
        async with self.engine.run(prompt, model=model, max_tokens=max_tokens) as gen:
            if chat:
                delta = {"role": "assistant", "content": ""}
                first = {
                    **head,
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                    ],
                }
                await resp.write(b"data: " + _dumps(first) + b"\n\n")
            async for piece in gen.tokens():
                finish = "length" if gen.completion_tokens == gen.max_tokens else None
                if chat:
                    c: dict[str, Any] = {
                        "index": 0,
                        "delta": {"content": piece},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                else:
                    c = {
                        "index": 0,
                        "text": piece,
                        "logprobs": None,
                        "finish_reason": finish,
                        "stop_reason": None,
                    }
                await resp.write(b"data: " + _dumps({**head, "choices": [c]}) + b"\n\n")
        if include_usage:
            usage = _usage(gen.prompt_tokens, gen.completion_tokens, gen.cached_tokens)
            final: dict[str, Any] = {**head, "choices": [], "usage": usage}
            await resp.write(b"data: " + _dumps(final) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request)
        model = self._model(body)
        inputs = _embedding_inputs(body)
        # One engine pass over all inputs: it occupies the pod like vLLM's pooling runner.
        joined: str | list[int] = (
            "".join(i for i in inputs if isinstance(i, str))
            if isinstance(inputs[0], str)
            else [t for i in inputs if isinstance(i, list) for t in i]
        )
        async with self.engine.run(joined, model=model, max_tokens=0) as gen:
            async for _ in gen.tokens():
                pass
        data: list[dict[str, Any]] = [
            {"object": "embedding", "index": n, "embedding": _embedding(item)}
            for n, item in enumerate(inputs)
        ]
        payload = {
            "id": f"embd-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": {
                "prompt_tokens": gen.prompt_tokens,
                "total_tokens": gen.prompt_tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }
        return web.Response(body=_dumps(payload), content_type="application/json")

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        created = int(time.time())
        data: list[dict[str, Any]] = [
            {
                "id": m,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": m,
                # Models after the first are served like LoRA adapters of the first.
                "parent": self.models[0] if n else None,
                "permission": [],
            }
            for n, m in enumerate(self.models)
        ]
        return web.Response(
            body=_dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def metrics_page(self, request: web.Request) -> web.StreamResponse:
        requested = request.query.getall("name[]", [])
        names = frozenset(requested) if requested else None
        resp = web.Response(body=self.metrics.render(names).encode())
        resp.headers["content-type"] = CONTENT_TYPE
        return resp

    async def request_log(self, request: web.Request) -> web.StreamResponse:
        if request.method == "DELETE":
            self.log.clear()
        return web.Response(body=_dumps(list(self.log)), content_type="application/json")

    async def state(self, request: web.Request) -> web.StreamResponse:
        stats = asdict(self.engine.stats())
        stats["kv_evicted_blocks"] = self.engine.kv.evicted_blocks
        return web.Response(body=_dumps(stats), content_type="application/json")


def create_app(engine: SimEngine, *, models: Sequence[str], name: str) -> web.Application:
    """Build the aiohttp application of one pod serving ``models`` with ``engine``.

    ``name`` is reported in the ``x-sim-pod`` header of every response.
    """
    if not models:
        raise ValueError("a pod serves at least one model")
    pod = _Pod(engine, models, name)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[pod.middleware])
    app.router.add_post("/v1/chat/completions", pod.chat)
    app.router.add_post("/v1/completions", pod.completions)
    app.router.add_post("/v1/embeddings", pod.embeddings)
    app.router.add_get("/v1/models", pod.list_models)
    app.router.add_get("/health", pod.health)
    app.router.add_get("/metrics", pod.metrics_page)
    app.router.add_get("/sim/requests", pod.request_log)
    app.router.add_delete("/sim/requests", pod.request_log)
    app.router.add_get("/sim/state", pod.state)
    return app
