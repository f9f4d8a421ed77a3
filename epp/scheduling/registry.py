"""Plugin types by name, so a config file can name them.

Each plugin module exports ``TYPE`` (its type name) and ``factory(name, parameters)``;
:func:`register_builtin_plugins` registers the built-in ones, explicitly (nothing
registers itself on import).

>>> registry = register_builtin_plugins(PluginRegistry())
>>> registry.create("queue-scorer", "q", {}).typed_name.name
'q'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.filters import by_label, candidate_sample, decode, label_selector, prefer_fresh
from epp.scheduling.pickers import max_score, random_picker, weighted_random
from epp.scheduling.producers import approx_prefix_cache, single_profile_handler
from epp.scheduling.scorers import (
    active_request,
    inflight_load,
    kv_cache_utilization,
    lora_affinity,
    no_hit_lru,
    prefix_cache,
    queue,
    running_requests,
    session_affinity,
)
from epp.scheduling.types import Plugin

__all__ = ["NOT_IMPLEMENTED", "PluginFactory", "PluginRegistry", "register_builtin_plugins"]

_ONE_POD = (
    "epp sends each request to one pod that prefills and decodes it: run a single "
    "profile (single-profile-handler, or none) with decode-filter, on pods labelled "
    "llm-d.ai/role=prefill-decode or not labelled"
)
_PRECISE = (
    "epp approximates each pod's prefix cache from its own routing: use "
    "prefix-cache-scorer (with approx-prefix-cache-producer for the reference's settings)"
)
_LATENCY = (
    "epp has no latency predictor: use queue-scorer, inflight-load-scorer and prefix-cache-scorer"
)
# Reference scheduling plugins epp does not implement, and what to use instead: a config
# that names one fails at start with this advice rather than "unknown type".
NOT_IMPLEMENTED: Mapping[str, str] = {
    "disagg-profile-handler": _ONE_POD,
    "pd-profile-handler": _ONE_POD,
    "prefill-filter": _ONE_POD,
    "encode-filter": _ONE_POD,
    "prefix-based-pd-decider": _ONE_POD,
    "always-disagg-pd-decider": _ONE_POD,
    "always-disagg-multimodal-decider": _ONE_POD,
    "disagg-headers-handler": _ONE_POD,
    "prefill-header-handler": _ONE_POD,
    "data-parallel-profile-handler": (
        "epp makes each of a pod's target ports an endpoint of its own: list the "
        "data-parallel ranks' ports as the InferencePool's targetPorts and use "
        "single-profile-handler"
    ),
    "header-profile-handler": (
        "epp runs one profile per pool: choose it in the config, or with the pool's "
        "routing-strategy annotation"
    ),
    "precise-prefix-cache-producer": _PRECISE,
    "precise-prefix-cache-scorer": _PRECISE,
    "session-affinity-filter": (
        "use session-affinity-scorer (same x-session-token) with a weight above the "
        "other scorers' sum"
    ),
    "token-load-scorer": "use active-request-scorer or inflight-load-scorer (requests in flight)",
    "load-aware-scorer": "use queue-scorer (waiting requests) or inflight-load-scorer",
    "predicted-latency-producer": _LATENCY,
    "latency-scorer": _LATENCY,
    "slo-headroom-tier-filter": _LATENCY,
    "prefix-cache-affinity-filter": _LATENCY,
}

# (instance name, parameters) -> plugin. Raises SchedulerConfigError for bad parameters.
PluginFactory = Callable[[str, Mapping[str, Any]], Plugin]


class PluginRegistry:
    """A map from plugin type name to factory."""

    __slots__ = ("_factories",)

    def __init__(self) -> None:
        self._factories: dict[str, PluginFactory] = {}

    def register(self, type_name: str, factory: PluginFactory) -> None:
        """Register ``factory`` under ``type_name``; a type already registered raises."""
        if not type_name:
            raise ValueError("plugin type name must not be empty")
        if type_name in self._factories:
            raise ValueError(f"plugin type {type_name!r} is already registered")
        self._factories[type_name] = factory

    def create(
        self, type_name: str, name: str, parameters: Mapping[str, Any] | None = None
    ) -> Plugin:
        """Build one plugin instance.

        Raises :class:`SchedulerConfigError` for an unknown type (listing the known ones)
        or parameters the factory rejects (naming plugin and parameter).
        """
        factory = self._factories.get(type_name)
        if factory is None and type_name in NOT_IMPLEMENTED:
            raise SchedulerConfigError(
                f"plugin {name!r}: type {type_name!r} of the reference EPP is not "
                f"implemented by epp; {NOT_IMPLEMENTED[type_name]}"
            )
        if factory is None:
            known = ", ".join(self.types()) or "none"
            raise SchedulerConfigError(
                f"plugin {name!r}: unknown type {type_name!r} (known types: {known})"
            )
        try:
            plugin = factory(name, parameters if parameters is not None else {})
        except SchedulerConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise SchedulerConfigError(
                f"plugin {name!r} (type {type_name!r}): invalid parameters: {exc}"
            ) from exc
        return plugin

    def types(self) -> list[str]:
        """The registered type names, sorted."""
        return sorted(self._factories)

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._factories


def register_builtin_plugins(registry: PluginRegistry) -> PluginRegistry:
    """Register every built-in plugin type in ``registry``; returns it."""
    for module in (
        candidate_sample,
        prefer_fresh,
        label_selector,
        by_label,
        decode,
        queue,
        kv_cache_utilization,
        inflight_load,
        prefix_cache,
        active_request,
        running_requests,
        lora_affinity,
        session_affinity,
        no_hit_lru,
        max_score,
        random_picker,
        weighted_random,
        approx_prefix_cache,
        single_profile_handler,
    ):
        registry.register(module.TYPE, module.factory)
    registry.register(label_selector.DEPRECATED_TYPE, label_selector.deprecated_factory)
    return registry
