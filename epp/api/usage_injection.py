"""Asking streamed completions for their usage, and hiding the answer from the client.

A streamed chat/completions response reports token usage only when the request sets
``stream_options.include_usage``; the model server then sends one extra event before
``data: [DONE]``, with ``"choices": []`` and the ``usage`` object. With
``--inject-stream-usage`` epp sets the option on streamed requests that lack it
(:func:`rewrite_request_body`) and takes that extra event back out of the response
(:class:`UsageEventStripper`), so the client sees the stream it asked for.

The stripper holds back only an incomplete trailing event (an SSE client cannot act on
one before its blank line anyway) and releases every complete event at once.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["USAGE_OPTION_PATHS", "UsageEventStripper", "rewrite_request_body", "wants_usage_option"]

# The OpenAI routes whose streams take stream_options (the Responses API always reports
# usage in its response.completed event).
USAGE_OPTION_PATHS = ("/v1/chat/completions", "/v1/completions")
# An event larger than this without its end is released as it is (no usage event is
# anywhere near this size), so a stream that never ends an event is never buffered.
MAX_HELD_BYTES = 64 * 1024
_EMPTY_CHOICES = (b'"choices":[]', b'"choices": []')


def wants_usage_option(path: str) -> bool:
    """Whether a request to ``path`` (``:path``, query allowed) takes ``stream_options``."""
    return path.split("?", 1)[0].rstrip("/") in USAGE_OPTION_PATHS


def rewrite_request_body(
    body: bytes | bytearray, *, model: str | None = None, include_usage: bool = False
) -> tuple[bytes | bytearray, bool]:
    """``body`` with ``model`` replaced and, if asked, ``stream_options.include_usage`` on.

    Returns the body and whether include_usage was added (the response then carries a
    usage event the client did not ask for). The body comes back as it was when nothing
    changes; otherwise keys keep their order.
    """
    document: dict[str, Any] = orjson.loads(body)
    changed = False
    if model is not None:
        document["model"] = model
        changed = True
    injected = False
    if include_usage:
        options = document.get("stream_options")
        if options is None or isinstance(options, dict):
            if not (options and options.get("include_usage") is True):
                document["stream_options"] = {**(options or {}), "include_usage": True}
                injected = changed = True
    return (orjson.dumps(document) if changed else body), injected


class UsageEventStripper:
    """Removes the usage-only event (``"choices": []`` with ``usage``) from an SSE stream.

    Chunk boundaries may fall anywhere; ``feed`` returns the bytes that can go to the
    client now (everything, at the end of the stream).
    """

    __slots__ = ("_done", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._done = False  # the usage event was removed: pass the rest straight through

    def feed(self, chunk: bytes, *, end_of_stream: bool) -> bytes:
        if self._done and not self._pending:
            return chunk
        data = self._pending + chunk if self._pending else chunk
        cut = len(data) if end_of_stream else _complete_events_end(data)
        if cut == 0 and len(data) > MAX_HELD_BYTES:
            cut = len(data)
        ready, self._pending = data[:cut], data[cut:]
        if self._done or not any(marker in ready for marker in _EMPTY_CHOICES):
            return ready
        return self._without_usage_event(ready)

    def _without_usage_event(self, data: bytes) -> bytes:
        kept: list[bytes] = []
        start = 0
        while start < len(data):
            end, separator = _next_event_end(data, start)
            event = data[start:end]
            if not self._done and _is_usage_event(event):
                self._done = True
            else:
                kept.append(event + separator)
            start = end + len(separator)
        return b"".join(kept)


def _complete_events_end(data: bytes) -> int:
    """Where the last complete event of ``data`` ends (after its blank line); 0 if none."""
    end = data.rfind(b"\n\n")
    if end >= 0:
        return end + 2
    end = data.rfind(b"\r\n\r\n")
    return end + 4 if end >= 0 else 0


def _next_event_end(data: bytes, start: int) -> tuple[int, bytes]:
    """The end of the event starting at ``start`` and the separator after it."""
    lf = data.find(b"\n\n", start)
    crlf = data.find(b"\r\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, b"\r\n\r\n"
    if lf >= 0:
        return lf, b"\n\n"
    return len(data), b""


def _is_usage_event(event: bytes) -> bool:
    text = event.strip()
    if not text.startswith(b"data:") or b'"usage"' not in text:
        return False
    try:
        payload = orjson.loads(text[5:])
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(payload, dict)
        and payload.get("choices") == []
        and isinstance(payload.get("usage"), dict)
    )
