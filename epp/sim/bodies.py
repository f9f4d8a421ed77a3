"""Request bodies in vLLM's OpenAI-compatible shapes: parsing, validation and error replies.

Chat prompts are "rendered" by joining the messages' text parts, with no template: that
text is what the engine caches and what ``/tokenize`` and the render endpoints report, so a
router that asks for tokens sees exactly the tokens the pod computes.
"""

from __future__ import annotations

import json
from typing import Any

import xxhash
from aiohttp import web

__all__ = [
    "EMBEDDING_DIMENSIONS",
    "ApiError",
    "chat_prompt",
    "completion_prompt",
    "dumps",
    "embedding",
    "embedding_inputs",
    "error_response",
    "is_token_ids",
    "json_object",
    "positive_int",
    "usage",
]

EMBEDDING_DIMENSIONS = 8


class ApiError(Exception):
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


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(obj, separators=(",", ":")).encode()


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    """vLLM's error body ``{"error": {"message", "type", "param", "code"}}``."""
    payload = {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "Error"),
            "param": param,
            "code": status,
        }
    }
    return web.Response(status=status, body=dumps(payload), content_type="application/json")


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400."""
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, f"invalid JSON body: {exc}") from exc
    if not isinstance(obj, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return obj


def chat_prompt(body: dict[str, Any]) -> str:
    """The rendered chat prompt: the text parts of all messages, joined (non-text parts skipped)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    parts: list[str] = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise ApiError(400, "each message must be an object", "messages")
        content = msg.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            # Non-text parts (images, audio) carry no prompt text for the cache.
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise ApiError(400, "a text part needs a string 'text'", "messages")
                    parts.append(text)
        elif content is not None:
            raise ApiError(400, "message content must be a string or a list", "messages")
    return "".join(parts)


def is_token_ids(value: object) -> bool:
    """Whether ``value`` is a list of ints (not bools)."""
    return isinstance(value, list) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    )


def completion_prompt(body: dict[str, Any]) -> str | list[int]:
    """The completion prompt: a string or token ids (a one-element batch is unwrapped)."""
    prompt = body.get("prompt")
    # A one-element batch is common client behaviour; real batches would need n choices.
    if isinstance(prompt, list) and len(prompt) == 1 and not is_token_ids(prompt):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if is_token_ids(prompt) and prompt:
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError(400, "the simulator does not support batched prompts", "prompt")
    raise ApiError(400, "'prompt' must be a string or a list of token ids", "prompt")


def embedding_inputs(body: dict[str, Any]) -> list[str | list[int]]:
    """The embedding inputs: strings or token-id lists."""
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if is_token_ids(value) and value:
        return [list(value)]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(is_token_ids(v) and v for v in value):
            return [list(v) for v in value]
    raise ApiError(400, "'input' must be a string, a list of strings or token ids", "input")


def embedding(item: str | list[int]) -> list[float]:
    """A deterministic unit vector of ``EMBEDDING_DIMENSIONS`` floats."""
    data = item.encode() if isinstance(item, str) else dumps(item)
    raw = [xxhash.xxh64_intdigest(data, seed=d) / 2**63 - 1.0 for d in range(EMBEDDING_DIMENSIONS)]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [x / norm for x in raw]


def positive_int(body: dict[str, Any], key: str) -> int | None:
    """``body[key]`` if it is a positive int, None if absent, else a 400."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ApiError(400, f"'{key}' must be a positive integer", key)
    return value


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """The OpenAI ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
