"""The HTTP face of one simulated pod: an aiohttp app speaking vLLM's OpenAI-compatible API.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (JSON, or SSE with
``"stream": true``), ``POST /v1/responses`` (``vllm_sim.responses``),
``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health``,
``GET /metrics``; for routers that ask for tokens ``POST /tokenize`` and
``POST /v1/chat/completions/render`` / ``POST /v1/completions/render`` (vLLM's shapes); the
peer-router routes of ``vllm_sim.peer_api``; and for tests ``GET|DELETE /sim/requests``
(the last 256 requests received), ``GET /sim/state`` (the engine's counters as JSON) and
``/sim/faults`` (injected errors and queue depth: ``vllm_sim.faults``).

Every response carries ``x-sim-pod`` (the pod's name) and, so tests can check what the
proxy delivered, ``x-sim-body-sha256`` / ``x-sim-body-bytes`` of the raw request body and
``x-sim-model-header`` (the received ``x-gateway-model-name``, or ""). Non-streamed
completions also carry ``x-sim-ttft-s`` and ``x-sim-e2e-s``: the request's time to first
token and end-to-end latency in simulated seconds, as the pod's histograms record them.

Errors use vLLM's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a
body that is not a JSON object (one nested too deeply, or holding an unpaired surrogate,
included), misses its prompt, has a field of the wrong type or a token budget beyond the
context length; 404 for a model the pod does not serve. No request body makes a pod
answer 500. A request without ``model`` goes to the pod's first model, as in vLLM.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from vllm_sim.bodies import (
    ApiError,
    chat_prompt,
    completion_prompt,
    dumps,
    embedding,
    embedding_inputs,
    error_response,
    json_object,
    optional_int,
    optional_number,
    optional_str,
    positive_int,
    stream_options,
    usage,
)
from vllm_sim.engine import SimEngine
from vllm_sim.faults import Faults, fault_routes
from vllm_sim.generation import piece
from vllm_sim.metrics import CONTENT_TYPE, MetricsRenderer
from vllm_sim.responses import responses_handler
from vllm_sim.tokens import token_ids, token_strs

__all__ = ["ENGINE_KEY", "MAX_BODY_BYTES", "REQUEST_LOG_SIZE", "create_app"]

MAX_BODY_BYTES = 64 * 1024 * 1024
REQUEST_LOG_SIZE = 256
# The pod's engine, for routes added outside this module (``request.app[ENGINE_KEY]``).
ENGINE_KEY = web.AppKey("epp_sim_engine", SimEngine)
# Scrapes and probes would flush real traffic out of the bounded request log.
_UNLOGGED_PATHS = ("/metrics", "/health", "/sim/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class _Received:
    body: bytes
    sha256: str
    model_header: str


class _Pod:
    """Handlers and per-pod state; one instance per ``web.Application``."""

    def __init__(
        self, engine: SimEngine, models: Sequence[str], name: str, lora_paths: Mapping[str, str]
    ) -> None:
        self.engine = engine
        self.models = tuple(models)
        self.name = name
        self.lora_paths = dict(lora_paths)
        self.faults = Faults()
        self.metrics = MetricsRenderer(engine, self.models, faults=self.faults)
        self.log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        # Keyed by id(request): aiohttp requests are unhashable, and this lives only
        # while the middleware runs.
        self._received: dict[int, _Received] = {}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            resp: web.StreamResponse = error_response(413, "request body too large")
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
                if (
                    self.faults.status is not None
                    and request.method == "POST"
                    and (request.path.startswith("/v1/"))
                ):
                    raise ApiError(self.faults.status, "injected fault (POST /sim/faults)")
                resp = await handler(request)
            except ApiError as exc:
                resp = error_response(exc.status, exc.message, exc.param)
            except web.HTTPException as exc:
                resp = error_response(exc.status, exc.reason)
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
        return json_object(self._received[id(request)].body)

    def _model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if model is None:
            return self.models[0]
        if not isinstance(model, str):
            raise ApiError(400, "'model' must be a string", "model")
        if model not in self.models:
            raise ApiError(404, f"The model `{model}` does not exist.", "model")
        return model

    def _max_tokens(self, body: dict[str, Any]) -> int:
        for key in ("max_completion_tokens", "max_tokens"):
            value = positive_int(body, key, maximum=self.engine.config.max_model_len)
            if value is not None:
                return value
        return self.engine.config.default_max_tokens

    @staticmethod
    def _streaming(body: dict[str, Any]) -> tuple[bool, bool]:
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "'stream' must be a boolean", "stream")
        options = stream_options(body)
        return stream, bool(options and options.get("include_usage"))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body = self._body(request)
        model = self._model(body)
        prompt: str | list[int] = chat_prompt(body) if chat else completion_prompt(body)
        max_tokens = self._max_tokens(body)
        stream, include_usage = self._streaming(body)
        rid = f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not stream:
            async with self.engine.run(prompt, model=model, max_tokens=max_tokens) as gen:
                await gen.wait()
            text = gen.text()
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
                "usage": usage(gen.prompt_tokens, gen.completion_tokens, gen.cached_tokens),
            }
            plain = web.Response(body=dumps(payload), content_type="application/json")
            # Simulated seconds from arrival: a benchmark can read GPU-like latencies per
            # request without streaming every token.
            plain.headers["x-sim-ttft-s"] = f"{(gen.first_token_s or 0.0) - gen.arrival_s:.6f}"
            plain.headers["x-sim-e2e-s"] = f"{gen.last_token_s - gen.arrival_s:.6f}"
            return plain

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
        # Each token's event is a template around its text: no dict and dumps per token.
        opening = b"data: " + dumps(head)[:-1] + b',"choices":[{"index":0,'
        if chat:
            before, after = opening + b'"delta":{"content":"', b'"},"logprobs":null'
            closing = b"}]}\n\n"
        else:
            before, after = opening + b'"text":"', b'","logprobs":null'
            closing = b',"stop_reason":null}]}\n\n'
        last = max_tokens - 1
        role = b""
        if chat:  # vLLM sends the role event with the first token, not before it
            delta = {"role": "assistant", "content": ""}
            first = {
                **head,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
            }
            role = b"data: " + dumps(first) + b"\n\n"
        async with self.engine.run(prompt, model=model, max_tokens=max_tokens) as gen:
            async for batch in gen.token_batches():
                # Token pieces are ASCII words ("tok3"): no JSON escaping needed.
                await resp.write(
                    role
                    + b"".join(
                        before
                        + piece(i).encode()
                        + after
                        + (b',"finish_reason":"length"' if i == last else b',"finish_reason":null')
                        + closing
                        for i in batch
                    )
                )
                role = b""
        if include_usage:
            totals = usage(gen.prompt_tokens, gen.completion_tokens, gen.cached_tokens)
            final: dict[str, Any] = {**head, "choices": [], "usage": totals}
            await resp.write(b"data: " + dumps(final) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request)
        model = self._model(body)
        inputs = embedding_inputs(body)
        # One engine pass over all inputs: it occupies the pod like vLLM's pooling runner.
        joined: str | list[int] = (
            "".join(i for i in inputs if isinstance(i, str))
            if isinstance(inputs[0], str)
            else [t for i in inputs if isinstance(i, list) for t in i]
        )
        async with self.engine.run(joined, model=model, max_tokens=0) as gen:
            await gen.wait()
        data: list[dict[str, Any]] = [
            {"object": "embedding", "index": n, "embedding": embedding(item)}
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
        return web.Response(body=dumps(payload), content_type="application/json")

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        # vLLM's cards (serving_models.py): the base model's root is its path and it has a
        # max_model_len; an adapter's root is its path, its parent the base model, and its
        # max_model_len null.
        created = int(time.time())
        base = self.models[0]
        data: list[dict[str, Any]] = [
            {
                "id": m,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": self.lora_paths.get(m, m) if n else m,
                "parent": base if n else None,
                "max_model_len": None if n else self.engine.config.max_model_len,
                "permission": [],
            }
            for n, m in enumerate(self.models)
        ]
        return web.Response(
            body=dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def tokenize(self, request: web.Request) -> web.StreamResponse:
        """vLLM's ``/tokenize``: ``{"model", "prompt"}`` or ``{"model", "messages"}``."""
        body = self._body(request)
        self._model(body)
        prompt: str | list[int]
        if "messages" in body:
            prompt = chat_prompt(body)
        elif isinstance(body.get("prompt"), str):
            prompt = body["prompt"]
        else:
            raise ApiError(400, "'prompt' must be a string, or give 'messages'", "prompt")
        ids = token_ids(prompt)
        payload = {
            "count": len(ids),
            "max_model_len": self.engine.config.max_model_len,
            "tokens": ids,
            "token_strs": token_strs(prompt) if body.get("return_token_strs") else None,
        }
        return web.Response(body=dumps(payload), content_type="application/json")

    async def render_chat(self, request: web.Request) -> web.StreamResponse:
        """vLLM's ``/v1/chat/completions/render``: the request as the engine would run it."""
        body = self._body(request)
        self._model(body)
        return self._render(body, chat_prompt(body), "chatcmpl")

    async def render_completion(self, request: web.Request) -> web.StreamResponse:
        """vLLM's ``/v1/completions/render``: a list, one entry per prompt."""
        body = self._body(request)
        self._model(body)
        return self._render(body, completion_prompt(body), "cmpl", as_list=True)

    def _render(
        self, body: dict[str, Any], prompt: str | list[int], prefix: str, *, as_list: bool = False
    ) -> web.Response:
        # vLLM answers with a GenerateRequest (vllm/entrypoints/serve/disagg/protocol.py);
        # "prompt", the rendered text, is the simulator's addition.
        stream, _ = self._streaming(body)
        params: dict[str, Any] = {"n": 1, "max_tokens": self._max_tokens(body)}
        # Only well-typed values are echoed, as vLLM's request model would accept them.
        for key, value in (
            ("temperature", optional_number(body, "temperature")),
            ("top_p", optional_number(body, "top_p")),
            ("seed", optional_int(body, "seed")),
        ):
            if value is not None:
                params[key] = value
        priority = optional_int(body, "priority")
        rendered = {
            "request_id": f"{prefix}-{uuid.uuid4().hex}",
            "token_ids": token_ids(prompt),
            "features": None,
            "sampling_params": params,
            "model": body.get("model"),
            "stream": stream,
            "stream_options": stream_options(body) if stream else None,
            "cache_salt": optional_str(body, "cache_salt"),
            "priority": 0 if priority is None else priority,
            "kv_transfer_params": None,
            "prompt": prompt if isinstance(prompt, str) else None,
        }
        payload: Any = [rendered] if as_list else rendered
        return web.Response(body=dumps(payload), content_type="application/json")

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
        return web.Response(body=dumps(list(self.log)), content_type="application/json")

    async def state(self, request: web.Request) -> web.StreamResponse:
        stats = asdict(self.engine.stats())
        stats["kv_evicted_blocks"] = self.engine.kv.evicted_blocks
        return web.Response(body=dumps(stats), content_type="application/json")


def create_app(
    engine: SimEngine,
    *,
    models: Sequence[str],
    name: str,
    lora_paths: Mapping[str, str] | None = None,
) -> web.Application:
    """Build the aiohttp application of one pod serving ``models`` with ``engine``.

    The models after the first are LoRA adapters of the first (give the engine the same
    ones as ``lora_adapters``); ``lora_paths`` says where each was loaded from.
    ``name`` is reported in the ``x-sim-pod`` header of every response.
    """
    if not models:
        raise ValueError("a pod serves at least one model")
    pod = _Pod(engine, models, name, lora_paths or {})
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[pod.middleware])
    app[ENGINE_KEY] = engine
    app.router.add_post("/v1/chat/completions", pod.chat)
    app.router.add_post("/v1/completions", pod.completions)
    app.router.add_post("/v1/embeddings", pod.embeddings)
    app.router.add_post("/v1/responses", responses_handler(pod))
    app.router.add_get("/v1/models", pod.list_models)
    app.router.add_get("/health", pod.health)
    app.router.add_get("/metrics", pod.metrics_page)
    app.router.add_get("/sim/requests", pod.request_log)
    app.router.add_delete("/sim/requests", pod.request_log)
    app.router.add_get("/sim/state", pod.state)
    app.router.add_routes(fault_routes(pod.faults))
    app.router.add_post("/tokenize", pod.tokenize)
    app.router.add_post("/v1/chat/completions/render", pod.render_chat)
    app.router.add_post("/v1/completions/render", pod.render_completion)
    # Imported here: peer routes may reach back for ENGINE_KEY.
    from vllm_sim.peer_api import add_peer_routes

    add_peer_routes(app, models=tuple(models), name=name)
    return app
