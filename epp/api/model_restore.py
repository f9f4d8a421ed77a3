"""Put the client's model name back into a response whose request was rewritten.

The model server answers with the model it ran (``"model":"llama-3-8b-v2"``); the client
asked for ``llama-3-8b`` and should see that. Responses stream through in chunks that
may split the field anywhere, so the restorer holds back only a tail that could be the
start of the field, and releases everything else at once: an SSE event is never delayed
waiting for the next one. OpenAI-compatible servers write the field compactly or with
one space after the colon; both are handled.
"""

from __future__ import annotations

import orjson

__all__ = ["ModelNameRestorer"]


class ModelNameRestorer:
    def __init__(self, served_model: str, client_model: str) -> None:
        served = orjson.dumps(served_model)
        client = orjson.dumps(client_model)
        self._replacements = [
            (b'"model":' + served, b'"model":' + client),
            (b'"model": ' + served, b'"model": ' + client),
        ]
        self._longest = max(len(old) for old, _ in self._replacements)
        self._pending = b""

    def feed(self, chunk: bytes, *, end_of_stream: bool) -> bytes:
        """The bytes that can go to the client now (all of them at the end of stream)."""
        data = self._pending + chunk if self._pending else chunk
        for old, new in self._replacements:
            if old in data:
                data = data.replace(old, new)
        if end_of_stream:
            self._pending = b""
            return data
        hold = self._partial_tail(data)
        self._pending = data[len(data) - hold :] if hold else b""
        return data[: len(data) - hold] if hold else data

    def _partial_tail(self, data: bytes) -> int:
        """Length of the longest tail of ``data`` that is a proper prefix of a pattern."""
        start = max(0, len(data) - self._longest + 1)
        index = data.find(b'"', start)
        while index != -1:
            tail = data[index:]
            if any(old.startswith(tail) for old, _ in self._replacements):
                return len(tail)
            index = data.find(b'"', index + 1)
        return 0
