"""Request bodies in vLLM's OpenAI-compatible shapes: parsing, validation and error replies.

Chat prompts are "rendered" by joining the messages' text parts, with no template: that
text is what the engine caches and what ``/tokenize`` and the render endpoints report, so a
router that asks for tokens sees exactly the tokens the pod computes.
"""

from __future__ import annotations

import json
import math
import re
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
    "optional_int",
    "optional_number",
    "optional_str",
    "positive_int",
    "stream_options",
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
    """The body as a JSON object, or a 400; never another exception.

    The text is UTF-8 (or the UTF-16/32 that ``json`` detects), decoded strictly. Beyond
    what ``json.loads`` rejects, a 400 also answers nesting deeper than its C decoder's
    recursion allows (Python raises RecursionError there) and a ``\\uD800``-style escape
    that is not half of a surrogate pair: such a string cannot be encoded as UTF-8, so it
    would fail later, when the prompt is tokenized.
    """
    try:
        text = body.decode(json.detect_encoding(body))
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"invalid JSON body: {exc}") from exc
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ApiError(400, f"invalid JSON body: {exc}") from exc
    except RecursionError as exc:
        raise ApiError(400, "invalid JSON body: nested too deeply") from exc
    if not isinstance(obj, dict):
        raise ApiError(400, "the request body must be a JSON object")
    # The walk is needed only when the text holds a surrogate escape (emoji are sent as
    # pairs of them by ``ensure_ascii`` encoders); other bodies skip it.
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(obj):
        raise ApiError(400, "invalid JSON body: a string holds an unpaired UTF-16 surrogate")
    return obj


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(obj: object) -> bool:
    # Iterative: the object may be nested as deeply as json.loads allowed.
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


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


def positive_int(body: dict[str, Any], key: str, *, maximum: int | None = None) -> int | None:
    """``body[key]`` if it is a positive int (at most ``maximum``), None if absent, else a 400.

    The simulator's token budgets are bounded by the context length (vLLM bounds prompt
    plus output): a budget of 10**12 tokens would otherwise keep a pod busy forever.
    """
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ApiError(400, f"'{key}' must be a positive integer", key)
    if maximum is not None and value > maximum:
        raise ApiError(
            400, f"'{key}' is {value}, more than the model's context length ({maximum})", key
        )
    return value


def optional_int(body: dict[str, Any], key: str) -> int | None:
    """``body[key]`` if it is an int (not a bool), None if absent or null, else a 400."""
    value = body.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ApiError(400, f"'{key}' must be an integer", key)


def optional_number(body: dict[str, Any], key: str) -> float | int | None:
    """``body[key]`` if it is a finite number, None if absent or null, else a 400."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    raise ApiError(400, f"'{key}' must be a finite number", key)


def optional_str(body: dict[str, Any], key: str) -> str | None:
    """``body[key]`` if it is a string, None if absent or null, else a 400."""
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ApiError(400, f"'{key}' must be a string", key)


_STREAM_OPTIONS = ("include_usage", "continuous_usage_stats")


def stream_options(body: dict[str, Any]) -> dict[str, bool] | None:
    """``stream_options`` as vLLM's ``StreamOptions`` (known boolean flags only), or a 400."""
    value = body.get("stream_options")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    options: dict[str, bool] = {}
    for key in _STREAM_OPTIONS:
        flag = value.get(key)
        if flag is None:
            continue
        if not isinstance(flag, bool):
            raise ApiError(400, f"'stream_options.{key}' must be a boolean", "stream_options")
        options[key] = flag
    return options


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """The OpenAI ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
