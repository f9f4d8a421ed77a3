"""Turn parsed samples into a :class:`Metrics`: pure functions, no I/O, no clock.

Several series may share a name (one per ``model_name``, one per data-parallel
``engine``); how they combine is explicit, per signal:

=============  ===========  ==================================================
signal         aggregation  why
=============  ===========  ==================================================
waiting        SUM          requests queue per series; the pod holds them all
running        SUM          likewise
KV-cache use   MAX          the fullest cache decides when the pod preempts
cache config   first        an info metric; its labels, not its value, matter
=============  ===========  ==================================================

Non-finite samples (``NaN``, ``±Inf``) carry no usable reading and are skipped. A required
signal (waiting, running, KV use) with no finite sample raises
:class:`MetricsExtractError`; the cache config is optional.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence

from epp.datalayer.endpoint import Metrics
from epp.datalayer.errors import MetricsExtractError
from epp.datalayer.metric_mappings import MetricMapping
from epp.datalayer.prometheus_text import Sample

__all__ = ["Aggregation", "aggregate", "detect_mapping", "extract_metrics"]

Samples = Mapping[str, Sequence[Sample]]


class Aggregation(enum.Enum):
    """How the series of one metric name combine into one number."""

    SUM = "sum"  # counts that add up across series
    MAX = "max"  # fractions where the worst series governs


def aggregate(samples: Sequence[Sample], how: Aggregation) -> float | None:
    """Combine the finite values of ``samples``; ``None`` when there is none."""
    values = [s.value for s in samples if math.isfinite(s.value)]
    if not values:
        return None
    if how is Aggregation.SUM:
        return math.fsum(values)
    return max(values)


def detect_mapping(samples: Samples, mappings: Sequence[MetricMapping]) -> MetricMapping | None:
    """The first mapping any of whose waiting/running/KV names appears in ``samples``."""
    for mapping in mappings:
        if any(name in samples for name in mapping.required_names()):
            return mapping
    return None


def extract_metrics(samples: Samples, mapping: MetricMapping, *, updated_at: float) -> Metrics:
    """Build a ``Metrics`` from ``samples`` (as returned by ``parse_samples``) under ``mapping``.

    Counts are rounded to int and floored at 0; KV-cache use is clamped to [0, 1].
    Raises :class:`MetricsExtractError` when waiting, running or KV use is missing.
    """
    waiting = _required(samples, mapping.waiting, Aggregation.SUM)
    running = _required(samples, mapping.running, Aggregation.SUM)
    kv_usage = _required(samples, mapping.kv_usage, Aggregation.MAX)
    block_size, num_blocks = _cache_config(samples, mapping)
    return Metrics(
        waiting_requests=max(0, round(waiting)),
        running_requests=max(0, round(running)),
        kv_cache_usage=min(1.0, max(0.0, kv_usage)),
        kv_block_size=block_size,
        kv_num_blocks=num_blocks,
        updated_at=updated_at,
    )


def _first_present(samples: Samples, names: Sequence[str]) -> tuple[str, Sequence[Sample]] | None:
    for name in names:
        found = samples.get(name)
        if found:
            return name, found
    return None


def _required(samples: Samples, names: Sequence[str], how: Aggregation) -> float:
    present = _first_present(samples, names)
    if present is None:
        raise MetricsExtractError(f"metric {' or '.join(names)} not found")
    name, series = present
    value = aggregate(series, how)
    if value is None:
        raise MetricsExtractError(f"metric {name} has no finite value")
    return value


def _cache_config(samples: Samples, mapping: MetricMapping) -> tuple[int | None, int | None]:
    present = _first_present(samples, mapping.cache_config)
    if present is None:
        return None, None
    labels = present[1][0].labels
    return (
        _positive_int(labels.get(mapping.block_size_label)),
        _positive_int(labels.get(mapping.num_blocks_label)),
    )


def _positive_int(text: str | None) -> int | None:
    # vLLM reports num_gpu_blocks="None" until the KV cache has been profiled.
    if text is None:
        return None
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        return None
    return value if value > 0 else None
