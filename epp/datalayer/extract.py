"""Turn parsed samples into a :class:`Metrics`: pure functions, no I/O, no clock.

Several series may share a name (one per ``model_name``, one per data-parallel
``engine``); how they combine is explicit, per signal, and every series is checked
before it is combined, so a bad one cannot hide inside a sum:

=============  ===========  ================  ======================================
signal         aggregation  each series must  why
=============  ===========  ================  ======================================
waiting        SUM          be >= 0           requests queue per series; the pod
                                              holds them all
running        SUM          be >= 0           likewise
KV-cache use   MAX          lie in 0..1       the fullest cache decides when the pod
                                              preempts
cache config   first        (labels only)     an info metric; its labels, not its
                                              value, matter
LoRA info      newest       (labels only)     an info metric whose value is when
                                              the series was made: the series with
                                              the largest value is the current one
models         union        (labels only)     the ``model_name`` label of the
                                              waiting, running and KV series
=============  ===========  ================  ======================================

A series out of range makes the whole scrape fail with :class:`MetricsExtractError`
naming the series and its value: a negative queue, or a KV-cache use of 85 (a
percentage where a fraction is expected), means the server or its exporter is broken,
and flooring or clamping it would route on a number nobody reported. Only float noise
is forgiven: a KV-cache use up to ``1 + KV_USAGE_TOLERANCE`` counts as 1. (A percentage
under 1 cannot be told from a fraction; it is caught once the load takes it over 1.)
Counts are rounded to the nearest integer.

Non-finite samples (``NaN``, ``±Inf``) carry no usable reading and are skipped, before
the range check. A required signal (waiting, running, KV use) with no finite sample
raises :class:`MetricsExtractError`; the cache config and the LoRA info are optional
(vLLM reports the latter only once an adapter has been used). A ``max_lora`` label that
is not a non-negative integer reads as unknown, as a malformed cache config does.
Model names are what ``/v1/models`` lists: one that is longer than
``MAX_MODEL_NAME_CHARS`` or holds an unprintable character is left out, and an endpoint
names at most ``MAX_MODELS_PER_ENDPOINT`` (the first in sorted order), so a hostile
page cannot grow the list.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence

from epp.datalayer.endpoint import Metrics
from epp.datalayer.errors import MetricsExtractError
from epp.datalayer.metric_mappings import MetricMapping
from epp.datalayer.prometheus_text import Sample

__all__ = [
    "KV_USAGE_TOLERANCE",
    "MAX_MODELS_PER_ENDPOINT",
    "MAX_MODEL_NAME_CHARS",
    "Aggregation",
    "aggregate",
    "cache_config",
    "detect_mapping",
    "extract_metrics",
    "fold_values",
    "lora_info",
    "required_names",
    "served_models",
]

Samples = Mapping[str, Sequence[Sample]]
# Adapters running, adapters waiting, and the most that may be loaded (None: unknown).
LoraInfo = tuple[frozenset[str], frozenset[str], int | None]
NO_LORA: LoraInfo = (frozenset(), frozenset(), None)

# How far over 1 a KV-cache use may be and still count as "full": room for the float
# noise of a used/total division, nothing more.
KV_USAGE_TOLERANCE = 1e-6
# Error texts quote a series' labels up to this length (a hostile pod may send long ones).
_MAX_LABELS_CHARS = 120
# A server labels its series with one model (vLLM: the first served name), a few with
# data-parallel engines of different models: room for that, not for a page's whim.
MAX_MODELS_PER_ENDPOINT = 16
# The longest model name a request may carry (epp.api.openai.MAX_MODEL_NAME_BYTES): a
# longer one could never be asked for.
MAX_MODEL_NAME_CHARS = 1024


class Aggregation(enum.Enum):
    """How the series of one metric name combine into one number."""

    SUM = "sum"  # counts that add up across series
    MAX = "max"  # fractions where the worst series governs


def aggregate(samples: Sequence[Sample], how: Aggregation) -> float | None:
    """Combine the finite values of ``samples``; ``None`` when there is none."""
    if len(samples) == 1:  # the common case (one engine per server), 20 times a second
        value = samples[0].value
        return value if math.isfinite(value) else None
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

    Raises :class:`MetricsExtractError` when waiting, running or KV use is missing, or a
    series of one of them is out of range (see the module docstring).
    """
    waiting = _required(samples, mapping.waiting, Aggregation.SUM, _check_count)
    running = _required(samples, mapping.running, Aggregation.SUM, _check_count)
    kv_usage = _required(samples, mapping.kv_usage, Aggregation.MAX, _check_fraction)
    block_size, num_blocks = _cache_config(samples, mapping)
    lora = lora_info(samples, mapping)
    models = served_models(samples, mapping)
    return _metrics(waiting, running, kv_usage, block_size, num_blocks, lora, models, updated_at)


def _metrics(
    waiting: float,
    running: float,
    kv_usage: float,
    block_size: int | None,
    num_blocks: int | None,
    lora: LoraInfo,
    models: frozenset[str],
    updated_at: float,
) -> Metrics:
    return Metrics(
        waiting_requests=round(waiting),
        running_requests=round(running),
        kv_cache_usage=min(1.0, kv_usage),  # only float noise can be over 1 here
        kv_block_size=block_size,
        kv_num_blocks=num_blocks,
        lora_running=lora[0],
        lora_waiting=lora[1],
        max_lora=lora[2],
        models=models,
        updated_at=updated_at,
    )


def required_names(samples: Samples, mapping: MetricMapping) -> tuple[str, str, str] | None:
    """The names :func:`extract_metrics` reads waiting, running and KV use from in
    ``samples``; ``None`` when one is missing."""
    waiting = _first_present(samples, mapping.waiting)
    running = _first_present(samples, mapping.running)
    kv_usage = _first_present(samples, mapping.kv_usage)
    if waiting is None or running is None or kv_usage is None:
        return None
    return waiting[0], running[0], kv_usage[0]


def fold_values(
    waiting: Sequence[float],
    running: Sequence[float],
    kv_usage: Sequence[float],
    cache_config: tuple[int | None, int | None],
    *,
    updated_at: float,
    lora: LoraInfo = NO_LORA,
    models: frozenset[str] = frozenset(),
) -> Metrics | None:
    """What :func:`extract_metrics` returns for samples with these values (under the
    names :func:`required_names` gave, ``cache_config`` from its block size and count,
    ``lora`` from :func:`lora_info`, ``models`` from :func:`served_models`), or ``None``
    where it would raise: the caller then runs it for the error."""
    waiting_sum = _fold(waiting, Aggregation.SUM, _check_count)
    running_sum = _fold(running, Aggregation.SUM, _check_count)
    kv_max = _fold(kv_usage, Aggregation.MAX, _check_fraction)
    if waiting_sum is None or running_sum is None or kv_max is None:
        return None
    return _metrics(waiting_sum, running_sum, kv_max, *cache_config, lora, models, updated_at)


def _fold(
    values: Sequence[float], how: Aggregation, check: Callable[[float], str | None]
) -> float | None:
    finite = [value for value in values if math.isfinite(value)]
    if not finite or any(check(value) is not None for value in finite):
        return None
    if how is Aggregation.SUM:
        return math.fsum(finite) if len(finite) > 1 else finite[0]
    return max(finite)


def _first_present(samples: Samples, names: Sequence[str]) -> tuple[str, Sequence[Sample]] | None:
    for name in names:
        found = samples.get(name)
        if found:
            return name, found
    return None


def _required(
    samples: Samples,
    names: Sequence[str],
    how: Aggregation,
    check: Callable[[float], str | None],
) -> float:
    present = _first_present(samples, names)
    if present is None:
        raise MetricsExtractError(f"metric {' or '.join(names)} not found")
    name, series = present
    for sample in series:
        # Non-finite values are skipped by aggregate(), not range-checked.
        if math.isfinite(sample.value):
            problem = check(sample.value)
            if problem is not None:
                reading = f"{_series(name, sample)} is {sample.value!r}"
                raise MetricsExtractError(f"{reading}: {problem}")
    value = aggregate(series, how)
    if value is None:
        raise MetricsExtractError(f"metric {name} has no finite value")
    return value


def _check_count(value: float) -> str | None:
    return "a request count cannot be negative" if value < 0 else None


def _check_fraction(value: float) -> str | None:
    if value < 0:
        return "KV-cache use cannot be negative"
    if value > 1.0 + KV_USAGE_TOLERANCE:
        return "expected the fraction of the KV cache in use, 0-1 (is it a percentage?)"
    return None


def _series(name: str, sample: Sample) -> str:
    """``name{label="value",...}``, the labels cut short: how errors name one series."""
    if not sample.labels:
        return name
    labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sample.labels.items())
    if len(labels) > _MAX_LABELS_CHARS:
        labels = labels[:_MAX_LABELS_CHARS] + "..."
    return f"{name}{{{labels}}}"


def _escape(label_value: str) -> str:
    # As the exposition format writes it, so the text can be searched for in the page.
    return label_value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def cache_config(samples: Samples, mapping: MetricMapping) -> tuple[int | None, int | None]:
    """The KV block size and block count from the cache-config info metric, if any."""
    return _cache_config(samples, mapping)


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


def lora_info(samples: Samples, mapping: MetricMapping) -> LoraInfo:
    """The LoRA adapters running and waiting, and ``max_lora``, from the newest series
    (largest finite value) of the mapping's LoRA info metric; nothing when absent."""
    present = _first_present(samples, mapping.lora_info)
    if present is None:
        return NO_LORA
    newest: Sample | None = None
    for sample in present[1]:
        if math.isfinite(sample.value) and (newest is None or sample.value > newest.value):
            newest = sample
    if newest is None:
        return NO_LORA
    labels = newest.labels
    max_lora = labels.get(mapping.max_lora_label)
    return (
        _adapters(labels.get(mapping.lora_running_label)),
        _adapters(labels.get(mapping.lora_waiting_label)),
        0 if max_lora is not None and max_lora.strip() == "0" else _positive_int(max_lora),
    )


def _adapters(text: str | None) -> frozenset[str]:
    if not text:
        return frozenset()
    return frozenset(name for name in (part.strip() for part in text.split(",")) if name)


def served_models(samples: Samples, mapping: MetricMapping) -> frozenset[str]:
    """The values of the mapping's model label on the waiting, running and KV series
    (those :func:`required_names` picks), bounded as the module docstring says."""
    names: set[str] = set()
    label = mapping.model_label
    for signal in (mapping.waiting, mapping.running, mapping.kv_usage):
        present = _first_present(samples, signal)
        if present is None:
            continue
        for sample in present[1]:
            name = sample.labels.get(label)
            if name and len(name) <= MAX_MODEL_NAME_CHARS and name.isprintable():
                names.add(name)
    if len(names) > MAX_MODELS_PER_ENDPOINT:
        return frozenset(sorted(names)[:MAX_MODELS_PER_ENDPOINT])
    return frozenset(names)
