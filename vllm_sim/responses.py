"""``POST /v1/responses``: the OpenAI Responses API as vLLM serves it (text only).

A non-streamed request gets one ``response`` object; a streamed one gets vLLM's events
(``event: <type>`` / ``data: {...}``), from ``response.created`` through one
``response.output_text.delta`` per token to ``response.completed``, which carries the
whole response and its ``usage`` (``input_tokens``, ``output_tokens``,
``input_tokens_details.cached_tokens``). There is no ``data: [DONE]``. A response that
stops at ``max_output_tokens`` is ``incomplete``, as in vLLM.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vllm_sim.bodies import ApiError, dumps, positive_int
from vllm_sim.generation import Generation, piece

if TYPE_CHECKING:
    from vllm_sim.server import _Pod

__all__ = ["responses_handler"]


def responses_handler(pod: _Pod) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def responses(request: web.Request) -> web.StreamResponse:
        body = pod._body(request)
        model = pod._model(body)
        prompt = _prompt(body)
        max_tokens = (
            positive_int(body, "max_output_tokens", maximum=pod.engine.config.max_model_len)
            or pod.engine.config.default_max_tokens
        )
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "'stream' must be a boolean", "stream")
        head = {
            "id": f"resp_{uuid.uuid4().hex}",
            "created_at": int(time.time()),
            "model": model,
            "max_output_tokens": max_tokens,
        }
        item_id = f"msg_{uuid.uuid4().hex}"
        if not stream:
            async with pod.engine.run(prompt, model=model, max_tokens=max_tokens) as gen:
                await gen.wait()
            payload = _response(head, item_id, gen, gen.text())
            return web.Response(body=dumps(payload), content_type="application/json")

        resp = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
            }
        )
        pod.stamp(request, resp)
        await resp.prepare(request)
        events = _Events(resp)
        async with pod.engine.run(prompt, model=model, max_tokens=max_tokens) as gen:
            started = {
                **head,
                "object": "response",
                "output": [],
                "status": "in_progress",
                "usage": None,
            }
            await events.send("response.created", {"response": started})
            await events.send("response.in_progress", {"response": started})
            item = {
                "id": item_id,
                "content": [],
                "role": "assistant",
                "status": "in_progress",
                "type": "message",
            }
            where = {"item_id": item_id, "output_index": 0, "content_index": 0}
            async for batch in gen.token_batches():
                if batch.start == 0:  # vLLM opens the message with the first token
                    await events.send(
                        "response.output_item.added", {"item": item, "output_index": 0}
                    )
                    await events.send(
                        "response.content_part.added", {**where, "part": _text_part("")}
                    )
                for i in batch:
                    await events.send(
                        "response.output_text.delta", {**where, "delta": piece(i), "logprobs": []}
                    )
        text = gen.text()
        await events.send("response.output_text.done", {**where, "text": text, "logprobs": []})
        await events.send("response.content_part.done", {**where, "part": _text_part(text)})
        final = _response(head, item_id, gen, text)
        await events.send(
            "response.output_item.done", {"item": final["output"][0], "output_index": 0}
        )
        await events.send("response.completed", {"response": final})
        await resp.write_eof()
        return resp

    return responses


class _Events:
    """Writes ``event:``/``data:`` pairs with vLLM's running ``sequence_number``."""

    def __init__(self, resp: web.StreamResponse) -> None:
        self._resp = resp
        self._sequence = 0

    async def send(self, kind: str, fields: dict[str, Any]) -> None:
        data = {**fields, "sequence_number": self._sequence, "type": kind}
        self._sequence += 1
        await self._resp.write(b"event: " + kind.encode() + b"\ndata: " + dumps(data) + b"\n\n")


def _prompt(body: dict[str, Any]) -> str:
    """``instructions`` then the text of ``input`` (a string, or message items)."""
    parts: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        parts.append(instructions)
    value = body.get("input")
    if isinstance(value, str):
        parts.append(value)
    elif isinstance(value, list) and value:
        for item in value:
            content = item.get("content") if isinstance(item, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(
                    p["text"]
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
    else:
        raise ApiError(400, "'input' must be a string or a non-empty list", "input")
    return "".join(parts)


def _text_part(text: str) -> dict[str, Any]:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": None}


def _response(head: dict[str, Any], item_id: str, gen: Generation, text: str) -> dict[str, Any]:
    incomplete = gen.completion_tokens >= gen.max_tokens
    return {
        **head,
        "object": "response",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "output": [
            {
                "id": item_id,
                "content": [_text_part(text)],
                "role": "assistant",
                "status": "incomplete" if incomplete else "completed",
                "type": "message",
            }
        ],
        "status": "incomplete" if incomplete else "completed",
        "usage": {
            "input_tokens": gen.prompt_tokens,
            "input_tokens_details": {"cached_tokens": gen.cached_tokens},
            "output_tokens": gen.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": gen.prompt_tokens + gen.completion_tokens,
        },
        "user": None,
    }
