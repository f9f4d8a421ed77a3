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
from epp.scheduling.filters import prefer_fresh
from epp.scheduling.pickers import max_score, random_picker
from epp.scheduling.scorers import inflight_load, kv_cache_utilization, prefix_cache, queue
from epp.scheduling.types import Plugin

__all__ = ["PluginFactory", "PluginRegistry", "register_builtin_plugins"]

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
        prefer_fresh,
        queue,
        kv_cache_utilization,
        inflight_load,
        prefix_cache,
        max_score,
        random_picker,
    ):
        registry.register(module.TYPE, module.factory)
    return registry
