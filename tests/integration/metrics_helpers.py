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


def body_modes(url: str) -> dict[str, float]:
    """epp's count of requests by the body mode Envoy sent their body in."""
    return {
        labels["mode"]: value
        for name, labels, value in scrape(url)
        if name == "epp_extproc_request_body_mode_total"
    }


def counted_since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The series of ``after`` that grew since ``before``, by how much."""
    return {
        key: value - before.get(key, 0.0)
        for key, value in after.items()
        if value != before.get(key, 0.0)
    }


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
