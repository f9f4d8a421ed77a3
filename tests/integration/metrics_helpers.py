"""Reading epp's /metrics in integration tests."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample on a /metrics page: (sample name, labels, value)."""
    text = httpx.get(url, timeout=5.0).text
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        value
        for sample, sample_labels, value in scrape(url)
        if sample == name and labels.items() <= sample_labels.items()
    )


def wait_for_metric(
    url: str, name: str, expected: float, timeout_s: float = 10.0, /, **labels: str
) -> float:
    """Poll until the metric reaches ``expected`` (epp records a request when its ext_proc
    stream closes, a moment after the client has its response); the last value read.

    Positional-only, so that no label (``**labels``) can be taken for ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = metric(url, name, **labels)
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.02)
