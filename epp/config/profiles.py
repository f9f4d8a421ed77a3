"""Scheduling profiles: the file's ``plugins`` and ``schedulingProfiles``, the built-in
profiles a pool's routing strategy picks, and the one way to build the scheduler.

The file's profiles become the scheduler's typed input (:mod:`epp.scheduling.spec`); the
plugins' parameters are read by the plugins themselves when the scheduler is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from epp.config.file import ConfigDocument, check_keys
from epp.config.reference import read_reference_plugins
from epp.config.settings import Config, ConfigError
from epp.scheduling.filters import prefer_fresh
from epp.scheduling.scheduler import Scheduler, build_scheduler
from epp.scheduling.spec import (
    PluginSpec,
    ProfilePluginRef,
    ProfileSpec,
    SchedulerConfig,
    default_scheduler_config,
    load_only_scheduler_config,
)

__all__ = [
    "ROUTING_STRATEGIES",
    "apply_weight_overrides",
    "build_scheduler_from_config",
    "scheduler_config",
]

# The profiles an InferencePool's routing-strategy annotation names; without one, the
# configured profile is used.
ROUTING_STRATEGIES: Mapping[str, Callable[[], SchedulerConfig]] = {
    "DEFAULT": load_only_scheduler_config,
    "PREFIX_CACHE": default_scheduler_config,
}


def build_scheduler_from_config(config: Config, routing_strategy: str | None = None) -> Scheduler:
    """The scheduler of ``config``'s profile, or of ``routing_strategy``'s when given (a
    key of ``ROUTING_STRATEGIES``).

    A prefer-fresh-filter without its own ``stalenessSeconds`` gets
    ``--metrics-staleness-threshold``, so it calls stale what admission and the pool
    metrics call stale. Raises ``SchedulerConfigError`` when the profile does not build.
    """
    if routing_strategy is None:
        scheduler = config.scheduler
    else:
        scheduler = ROUTING_STRATEGIES[routing_strategy]()
    return build_scheduler(_with_staleness(scheduler, config.data_layer.metrics_staleness_s))


def _with_staleness(scheduler: SchedulerConfig, staleness_s: float) -> SchedulerConfig:
    plugins = [
        dataclasses.replace(
            spec, parameters={prefer_fresh.STALENESS_PARAMETER: staleness_s, **spec.parameters}
        )
        if spec.type == prefer_fresh.TYPE
        else spec
        for spec in scheduler.plugins
    ]
    return dataclasses.replace(scheduler, plugins=plugins)


def scheduler_config(document: ConfigDocument) -> SchedulerConfig:
    """The file's scheduling plugins and profiles; epp's default profile when it has
    neither (a file whose plugins are all data-layer or parser ones has none)."""
    content, where = document.content, document.where
    # Data-layer and parser plugins are checked (and their settings taken) there.
    reference = read_reference_plugins(content, where)
    plugins_doc = reference.scheduling
    if not plugins_doc and "schedulingProfiles" not in content:
        return default_scheduler_config()
    profiles_doc = content.get("schedulingProfiles") or []
    if not isinstance(profiles_doc, list):
        raise ConfigError(f"{where}: plugins and schedulingProfiles must be lists")
    plugins: list[PluginSpec] = []
    for index, entry in plugins_doc:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
            raise ConfigError(f"{where}: plugins[{index}] needs a 'type'")
        check_keys(entry, ("type", "name", "parameters"), f"{where}: plugins[{index}]")
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, Mapping):
            raise ConfigError(f"{where}: plugins[{index}].parameters must be a mapping")
        plugins.append(
            PluginSpec(
                type=entry["type"],
                name=str(entry.get("name") or entry["type"]),
                parameters=dict(parameters),
            )
        )
    profiles: list[ProfileSpec] = []
    for index, entry in enumerate(profiles_doc):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("plugins"), list):
            raise ConfigError(f"{where}: schedulingProfiles[{index}] needs 'plugins'")
        check_keys(entry, ("name", "plugins"), f"{where}: schedulingProfiles[{index}]")
        refs = []
        for ref_index, ref in enumerate(entry["plugins"]):
            ref_where = f"{where}: schedulingProfiles[{index}].plugins[{ref_index}]"
            if not isinstance(ref, Mapping) or not isinstance(ref.get("pluginRef"), str):
                raise ConfigError(f"{ref_where} needs a 'pluginRef'")
            check_keys(ref, ("pluginRef", "weight"), ref_where)
            if ref["pluginRef"] in reference.conformance:
                continue  # the conformance hooks do its work before any profile runs
            # As written: build_scheduler checks weights, wherever the profile came from.
            refs.append(ProfilePluginRef(plugin_ref=ref["pluginRef"], weight=ref.get("weight")))
        profiles.append(ProfileSpec(name=str(entry.get("name", "default")), plugins=refs))
    return SchedulerConfig(plugins=plugins, profiles=profiles)


def apply_weight_overrides(
    scheduler: SchedulerConfig, weights: Mapping[str, float]
) -> SchedulerConfig:
    """``scheduler`` with the weights ``--scorer-weight`` gives, in every profile."""
    if not weights:
        return scheduler
    profiles = []
    seen: set[str] = set()
    for profile in scheduler.profiles:
        refs = []
        for ref in profile.plugins:
            if ref.plugin_ref in weights:
                seen.add(ref.plugin_ref)
                ref = dataclasses.replace(ref, weight=weights[ref.plugin_ref])
            refs.append(ref)
        profiles.append(dataclasses.replace(profile, plugins=refs))
    unknown = sorted(set(weights) - seen)
    if unknown:
        raise ConfigError(
            f"flag --scorer-weight: no scorer named {', '.join(unknown)} in the profile"
        )
    return dataclasses.replace(scheduler, profiles=profiles)
