"""What scheduling measures about itself, kept as plain data for observability to export.

Nothing in ``epp.scheduling`` imports a metrics library. The profile counts every plugin
call's duration into a :class:`PluginTiming`, and a plugin that keeps a prefix index
reports on it through :class:`PrefixStats`; ``epp.observability`` reads both when
``/metrics`` is scraped, and knows no plugin by its class. The bounds are the buckets of
the reference EPP's metrics (GIE ``pkg/epp/metrics/metrics.go``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from epp.distribution import Distribution
from epp.scheduling.types import Plugin, TypedName

__all__ = [
    "PLUGIN_DURATION_BOUNDS_NS",
    "PREFIX_HIT_BYTES_BOUNDS",
    "PREFIX_HIT_RATIO_BOUNDS",
    "PluginTiming",
    "PrefixStats",
]

# The reference's plugin_duration_seconds buckets (100 us to 100 ms) and finer ones below,
# since a plugin call here takes microseconds; in nanoseconds, as perf_counter_ns counts.
PLUGIN_DURATION_BOUNDS_NS = (
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
)
PREFIX_HIT_RATIO_BOUNDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
PREFIX_HIT_BYTES_BOUNDS = (
    0,
    16,
    32,
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32768,
    65536,
)


def _durations() -> Distribution:
    return Distribution(PLUGIN_DURATION_BOUNDS_NS)


@dataclass(frozen=True, slots=True)
class PluginTiming:
    """How long one plugin's calls at one extension point took, in nanoseconds."""

    typed_name: TypedName
    extension_point: str  # "filter", "scorer", "picker" or "post_pick"
    durations_ns: Distribution = field(default_factory=_durations)


@runtime_checkable
class PrefixStats(Plugin, Protocol):
    """A plugin that keeps a prefix index of what was sent where (``prefix-cache-scorer``).

    ``hit_ratios`` and ``hit_bytes`` count, at each pick after a scoring pass, the share
    of the prompt's prefix blocks and the bytes of prefix the chosen endpoint was found
    to hold; their bounds are ``PREFIX_HIT_RATIO_BOUNDS`` and ``PREFIX_HIT_BYTES_BOUNDS``,
    so the statistics of several such plugins add up.
    """

    def index_entries(self) -> int:
        """Entries (endpoint, prefix block) in the index now."""
        ...

    @property
    def hit_ratios(self) -> Distribution: ...

    @property
    def hit_bytes(self) -> Distribution: ...
