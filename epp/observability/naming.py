"""Which names epp's metrics are exported under: the current ones, and the legacy ones.

The reference EPP (llm-d-router v0.10, ``docs/metrics.md``) exports its metrics as
``llm_d_epp_*``; the ``inference_objective_*``, ``inference_pool_*`` and
``inference_extension_*`` names are deprecated there and still emitted beside them. epp
does the same: every metric with a legacy name is exported under both, **until epp 1.0**,
unless ``--legacy-metric-names=false`` turns the legacy ones off.

Both names are views of one record: a request is counted once, and the legacy family is
built from the same data when ``/metrics`` is scraped (its labels are a subset of the
current family's, so its series are sums of the current ones). Exporting both costs
scrape time and page size, not request time (``benchmarks/bench_metric_names.py``).
"""

from __future__ import annotations

__all__ = [
    "CURRENT_PREFIX",
    "DEFAULT_FAIRNESS_ID",
    "LEGACY_UNTIL",
    "legacy_names",
    "set_legacy_names",
]

CURRENT_PREFIX = "llm_d_epp_"
LEGACY_UNTIL = "epp 1.0"
# The fairness_id of requests that name none (the reference's metadata.DefaultFairnessID).
DEFAULT_FAIRNESS_ID = "default-flow"

_legacy = True


def set_legacy_names(enabled: bool) -> None:
    """Export the deprecated names beside the current ones (the default) or not."""
    global _legacy
    _legacy = enabled


def legacy_names() -> bool:
    """True while the deprecated names are exported."""
    return _legacy
