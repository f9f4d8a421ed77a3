"""The scheduler's typed configuration, shaped like the reference EndpointPickerConfig.

The config file's loader (:mod:`epp.config.profiles`) fills these;
:func:`epp.scheduling.scheduler.build_scheduler` validates references and weights and
builds the plugins::

    plugins:
      - {type: prefix-cache-scorer, parameters: {blockSize: 64}}
      - {type: max-score-picker}
    schedulingProfiles:
      - name: default
        plugins:
          - {pluginRef: prefix-cache-scorer, weight: 3}
          - {pluginRef: max-score-picker}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from epp.scheduling.filters import candidate_sample, prefer_fresh
from epp.scheduling.pickers import max_score
from epp.scheduling.scorers import (
    inflight_load,
    kv_cache_utilization,
    lora_affinity,
    no_hit_lru,
    prefix_cache,
    queue,
)

__all__ = [
    "DEFAULT_PROFILE_NAME",
    "PluginSpec",
    "ProfilePluginRef",
    "ProfileSpec",
    "SchedulerConfig",
    "default_scheduler_config",
    "load_only_scheduler_config",
]

DEFAULT_PROFILE_NAME = "default"


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """One plugin instance: its registered ``type``, a ``name`` (defaults to the type)
    that profiles refer to, and its ``parameters``."""

    type: str
    name: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.type)

    @property
    def instance_name(self) -> str:
        """``name``, which ``__post_init__`` has filled in."""
        return self.name or self.type


@dataclass(frozen=True, slots=True)
class ProfilePluginRef:
    """A profile's use of a plugin; scorers need a ``weight``, other plugins have none.

    The weight is as configured: :func:`~epp.scheduling.scheduler.build_scheduler` is
    where it is checked (a finite number >= 0), for every source of profiles alike.
    """

    plugin_ref: str
    weight: float | None = None


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    name: str
    plugins: Sequence[ProfilePluginRef]


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """``plugins`` and ``schedulingProfiles``; the profile named ``default`` is used, or
    the first one when none has that name."""

    plugins: Sequence[PluginSpec]
    profiles: Sequence[ProfileSpec]


# How far (in requests epp has in flight) a pod may run ahead of the least loaded one
# before the in-flight scorer gives it nothing. With weight 4 a request of gap costs
# 4/128 of a point: a full prefix match (worth 3) holds until the holder has 96 requests
# more in flight than the least loaded pod, an 83 % match until 80; then it spills.
DEFAULT_INFLIGHT_GAP_SCALE = 128.0


def _config_of(
    weights: list[tuple[str, float | None]], parameters: dict[str, dict[str, Any]]
) -> SchedulerConfig:
    return SchedulerConfig(
        plugins=[
            PluginSpec(type_name, parameters=parameters.get(type_name, {}))
            for type_name, _ in weights
        ],
        profiles=[
            ProfileSpec(
                DEFAULT_PROFILE_NAME,
                [ProfilePluginRef(type_name, weight) for type_name, weight in weights],
            )
        ],
    )


def load_only_scheduler_config() -> SchedulerConfig:
    """Metrics only, no prefix affinity: queue 2, KV cache 2, in-flight load 2 (over a
    sample of 256 in larger pools, as the default profile).

    The profile an InferencePool gets with the routing-strategy annotation ``DEFAULT``;
    suits traffic whose prompts share little.
    """
    weights: list[tuple[str, float | None]] = [
        (candidate_sample.TYPE, None),
        (prefer_fresh.TYPE, None),
        (queue.TYPE, 2.0),
        (kv_cache_utilization.TYPE, 2.0),
        (inflight_load.TYPE, 2.0),
        (max_score.TYPE, None),
    ]
    return _config_of(weights, {})


def default_scheduler_config() -> SchedulerConfig:
    """epp's default profile, tuned with benchmarks/routing (see the README):

    candidate-sample filter (a pool of over 256 endpoints is scored on a sample of 256
    that keeps the pods holding the prompt's prefix); prefer-fresh filter; prefix-cache 3,
    in-flight load 4 (absolute, gap scale 128), queue 1 (min-max), LoRA affinity 1,
    no-hit LRU 0.5; max-score picker.
    Against the reference EPP's weights (queue 2, KV 2, prefix 3, all load scores
    min-max) it keeps prefix affinity far more often: a pod one request busier than
    the others no longer loses a cache hit. The KV-cache scorer is left out: on a fleet
    of like pods it mostly moved requests off the pod that held their prefix.

    LoRA affinity 1 (benchmarks/bench_lora.py): adapter requests go where the adapter is
    loaded, ~6x fewer adapter loads than without it. Pods that report no LoRA info all
    score 0 there, so it changes nothing for pools without adapters.

    No-hit LRU 0.5: a request no pod holds any of goes to the pod that took such a
    request longest ago (its range weighs as much as 16 requests in flight), so cold
    prefills do not pile onto the one least loaded pod; TTFT p90 at the shared-prefix
    knee about half of what it was without it.
    """
    weights: list[tuple[str, float | None]] = [
        (candidate_sample.TYPE, None),
        (prefer_fresh.TYPE, None),
        (queue.TYPE, 1.0),
        (prefix_cache.TYPE, 3.0),
        (inflight_load.TYPE, 4.0),
        (lora_affinity.TYPE, 1.0),
        (no_hit_lru.TYPE, 0.5),
        (max_score.TYPE, None),
    ]
    parameters: dict[str, dict[str, Any]] = {
        inflight_load.TYPE: {"gapScale": DEFAULT_INFLIGHT_GAP_SCALE},
    }
    return _config_of(weights, parameters)
