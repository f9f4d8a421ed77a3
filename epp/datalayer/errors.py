"""Errors of the data layer: why an endpoint's metrics did not update.

    DataLayerError              anything that keeps one scrape from producing Metrics
    ├── ScrapeError             the poll failed: connect, timeout, HTTP status, body too large
    ├── MetricsParseError       a wanted line of the exposition text is malformed, or the
    │                           page holds more wanted lines than epp will parse
    └── MetricsExtractError     the text parsed, but a required metric is missing or a
                                series is out of range (a negative count, KV use outside 0-1)

None of these reaches a client: the scraper counts them on the ``Endpoint``
(``scrape_failures``, ``last_scrape_error``), keeps the previous ``Metrics``, which go
stale, and polls that endpoint less often until a scrape succeeds again. Foreign
exceptions (aiohttp, OSError, TimeoutError) are wrapped where they occur, with
``raise ... from exc``.
"""

from __future__ import annotations

__all__ = ["DataLayerError", "MetricsExtractError", "MetricsParseError", "ScrapeError"]


class DataLayerError(Exception):
    """One scrape of one endpoint failed; ``str(err)`` is the text logged and stored."""


class ScrapeError(DataLayerError):
    """The HTTP poll failed before any text could be parsed."""


class MetricsParseError(DataLayerError):
    """A line naming a wanted metric is not valid Prometheus text exposition format, or
    there are more such lines (or characters in them) than the scraper's limit."""

    def __init__(self, message: str, *, line_number: int | None = None) -> None:
        if line_number is not None:
            message = f"line {line_number}: {message}"
        super().__init__(message)
        self.line_number = line_number


class MetricsExtractError(DataLayerError):
    """The parsed samples do not yield a usable ``Metrics``: a required name is absent or
    has no finite value, or one of its series is out of range."""
