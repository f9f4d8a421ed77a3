"""Token usage read from model-server responses, cheaply, as they stream past.

Every OpenAI-compatible response that reports usage puts one ``usage`` object near its
end: the JSON body of a non-streamed response, the last ``data:`` event before
``data: [DONE]`` of a chat/completions stream asked with ``stream_options.include_usage``,
and the ``response.completed`` event of a Responses API stream. So no event is parsed on
the way: :class:`UsageReader` keeps a bounded copy of the body (the whole JSON body up to
``max_json_bytes``; only the tail of an SSE stream) and, at the end, :func:`find_usage`
looks for the last ``"usage":`` key and parses just the object after it.

A JSON string cannot hold the bytes ``"usage":`` unescaped (its quotes would be ``\\"``),
so generated text never fools the search.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

__all__ = [
    "DEFAULT_MAX_JSON_BYTES",
    "DEFAULT_SSE_TAIL_BYTES",
    "Usage",
    "UsageReader",
    "find_usage",
    "usage_from_object",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_JSON_BYTES = 4 * 1024 * 1024  # larger non-streamed bodies are not read
# The usage object and whatever follows it in the last event (a Responses API
# response.completed event ends with usage, user and a few short fields).
DEFAULT_SSE_TAIL_BYTES = 64 * 1024

_KEY = b'"usage"'
_MAX_OBJECT_BYTES = 4096  # a usage object is a few hundred bytes
_MAX_CLOSING_BRACES = 16


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one request, as its model server reported them."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None  # prompt tokens served from the prefix cache


def usage_from_object(usage: Any) -> Usage | None:
    """A :class:`Usage` from an OpenAI ``usage`` object, of either API family.

    Chat/completions: ``prompt_tokens``, ``completion_tokens``,
    ``prompt_tokens_details.cached_tokens``. Responses API: ``input_tokens``,
    ``output_tokens``, ``input_tokens_details.cached_tokens``. None if neither fits.
    """
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
        details = usage.get("prompt_tokens_details")
    elif "input_tokens" in usage:
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens", 0)
        details = usage.get("input_tokens_details")
    else:
        return None
    if completion is None:  # embeddings say "completion_tokens": 0, some servers null
        completion = 0
    if not _is_count(prompt) or not _is_count(completion):
        return None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(prompt, completion, cached if _is_count(cached) else None)


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def find_usage(data: bytes | bytearray) -> Usage | None:
    """The last ``usage`` object in ``data`` (a JSON body, or the tail of an SSE stream).

    ``"usage": null`` (OpenAI's chunks before the last) is skipped for an earlier object.

    >>> find_usage(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}')
    Usage(prompt_tokens=3, completion_tokens=2, cached_tokens=None)
    """
    end = len(data)
    while True:
        key = data.rfind(_KEY, 0, end)
        if key < 0:
            return None
        usage = _object_after(data, key + len(_KEY))
        if usage is not None:
            return usage
        end = key


def _object_after(data: bytes | bytearray, at: int) -> Usage | None:
    """The usage object that follows ``"usage"`` at ``at`` (``: {...}``), if any."""
    n = len(data)
    at = _skip_space(data, at, n)
    if at >= n or data[at] != 0x3A:  # ':'
        return None
    at = _skip_space(data, at + 1, n)
    if at >= n or data[at] != 0x7B:  # '{' (not null)
        return None
    # The object ends at the first closing brace that balances the opening ones (a usage
    # object nests one level and holds no strings with braces); if that slice does not
    # parse, try the next one, so a brace inside a string costs a retry, not a miss.
    stop = min(n, at + _MAX_OBJECT_BYTES)
    close = at
    for _ in range(_MAX_CLOSING_BRACES):
        close = data.find(b"}", close + 1, stop)
        if close < 0:
            return None
        candidate = data[at : close + 1]
        if candidate.count(b"{") != candidate.count(b"}"):
            continue
        try:
            value = orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
        return usage_from_object(value)
    return None


def _skip_space(data: bytes | bytearray, at: int, n: int) -> int:
    while at < n and data[at] in b" \t\r\n":
        at += 1
    return at


class UsageReader:
    """Keeps what :func:`find_usage` needs from one response body, fed chunk by chunk.

    ``sse``: keep only the last ``sse_tail_bytes`` (amortized O(chunk) per feed); else
    keep the whole body up to ``max_json_bytes``, past which usage is not read (logged
    at debug). ``usage()`` is meant to be called once, at the end of the body.
    """

    __slots__ = ("_buffer", "_limit", "_overflowed", "_sse")

    def __init__(
        self,
        *,
        sse: bool,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
        sse_tail_bytes: int = DEFAULT_SSE_TAIL_BYTES,
    ) -> None:
        self._sse = sse
        self._limit = sse_tail_bytes if sse else max_json_bytes
        self._buffer = bytearray()
        self._overflowed = False

    def feed(self, chunk: bytes) -> None:
        if self._overflowed or not chunk:
            return
        buffer = self._buffer
        buffer += chunk
        if len(buffer) <= self._limit:
            return
        if self._sse:
            # Trim only when twice over, so each byte is moved at most once on average.
            if len(buffer) > 2 * self._limit:
                del buffer[: len(buffer) - self._limit]
            return
        self._overflowed = True
        self._buffer = bytearray()
        log.debug("response body over %d bytes: its usage is not read", self._limit)

    def usage(self) -> Usage | None:
        if self._overflowed or not self._buffer:
            return None
        return find_usage(self._buffer)
