"""Log setup: human-readable text by default, one JSON object per line on request."""

from __future__ import annotations

import itertools
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import orjson

__all__ = ["MAX_LOGGED_CHARS", "JsonFormatter", "TextFormatter", "clip", "configure_logging"]

# Client-chosen text (paths, request ids, model names) is cut to this in log lines: a
# line stays a line, whatever a client sends.
MAX_LOGGED_CHARS = 256


def clip(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text``, or its first ``limit`` characters and how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra}``: what log pipelines ingest."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record):
            entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """One line of text; fields passed as ``extra`` follow the message as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # The default strftime()s every record; epp logs every request, so reuse the
        # text of the current second.
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = second
        return f"{self._second_text},{int(record.msecs):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = " ".join(f"{key}={_text_value(value)}" for key, value in _extras(record))
        return f"{line} {fields}" if fields else line


def _extras(record: logging.LogRecord) -> Iterator[tuple[str, Any]]:
    """The fields a record got from ``extra``, in order.

    A record's own attributes come first in its ``__dict__``, then the extras (and what
    formatting adds), so only the tail needs looking at.
    """
    for key, value in itertools.islice(record.__dict__.items(), _OWN_ATTRIBUTES, None):
        if key not in _RESERVED and not key.startswith("_"):
            yield key, value


_OWN_ATTRIBUTES = len(logging.makeLogRecord({}).__dict__)
_NEEDS_QUOTES = re.compile(r'[\s"=\\]')


def _text_value(value: Any) -> str:
    kind = type(value)
    if kind is str:
        # Quote what would not read back as one token (client-chosen model names).
        return orjson.dumps(value).decode() if not value or _NEEDS_QUOTES.search(value) else value
    if kind is bool:
        return "true" if value else "false"
    return str(value)


def configure_logging(level: str = "info", log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp logs every scrape, and the Kubernetes client every API call (lease renewals
    # every 2 s), at INFO; keep them to problems.
    for noisy in ("aiohttp.access", "httpx2", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
