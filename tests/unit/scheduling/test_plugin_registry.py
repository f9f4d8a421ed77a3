"""The plugin registry, built-in plugins' completeness and parameter validation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.registry import PluginRegistry, register_builtin_plugins
from epp.scheduling.scorers import queue
from epp.scheduling.types import Filter, Picker, Plugin, PostPick, Scorer

BUILTIN_TYPES = {
    "prefer-fresh-filter",
    "queue-scorer",
    "kv-cache-utilization-scorer",
    "inflight-load-scorer",
    "prefix-cache-scorer",
    "max-score-picker",
    "random-picker",
}


def builtins() -> PluginRegistry:
    return register_builtin_plugins(PluginRegistry())


def test_builtin_types_are_registered_sorted() -> None:
    registry = builtins()
    assert set(registry.types()) == BUILTIN_TYPES
    assert registry.types() == sorted(registry.types())
    assert "queue-scorer" in registry


@pytest.mark.parametrize("type_name", sorted(BUILTIN_TYPES))
def test_every_builtin_builds_from_default_parameters(type_name: str) -> None:
    plugin = builtins().create(type_name, f"my-{type_name}", {})
    assert isinstance(plugin, Plugin)
    assert (plugin.typed_name.type, plugin.typed_name.name) == (type_name, f"my-{type_name}")
    roles = [role for role in (Filter, Scorer, Picker, PostPick) if isinstance(plugin, role)]
    assert roles, f"{type_name} has no scheduling role"


def test_parameters_may_be_omitted() -> None:
    assert builtins().create("max-score-picker", "p").typed_name.name == "p"


def test_duplicate_type_rejected() -> None:
    registry = builtins()
    with pytest.raises(ValueError, match="already registered"):
        registry.register("queue-scorer", queue.factory)
    with pytest.raises(ValueError, match="already registered"):
        register_builtin_plugins(registry)


def test_unknown_type_lists_known_types() -> None:
    with pytest.raises(SchedulerConfigError, match=r"unknown type 'nope'.*queue-scorer") as caught:
        builtins().create("nope", "x", {})
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("type_name", "parameters", "message"),
    [
        pytest.param(
            "prefix-cache-scorer",
            {"blockSize": "64"},
            r"'blockSize' must be an integer",
            id="string-for-int",
        ),
        pytest.param(
            "prefix-cache-scorer",
            {"blockSize": 0},
            r"'blockSize' must be >= 1",
            id="zero-block-size",
        ),
        pytest.param(
            "prefix-cache-scorer",
            {"lruCapacityPerServer": True},
            r"'lruCapacityPerServer' must be an integer",
            id="bool-for-int",
        ),
        pytest.param(
            "prefix-cache-scorer",
            {"blocksize": 64},
            r"'blocksize' is not known \(known parameters: blockSize, ",
            id="typo",
        ),
        pytest.param(
            "prefer-fresh-filter",
            {"stalenessSeconds": -1},
            r"'stalenessSeconds' must be > 0",
            id="negative-staleness",
        ),
        pytest.param(
            "prefer-fresh-filter",
            {"stalenessSeconds": float("nan")},
            r"'stalenessSeconds' must be finite",
            id="nan-staleness",
        ),
        pytest.param(
            "max-score-picker",
            {"fallbacks": 1.5},
            r"'fallbacks' must be an integer",
            id="float-fallbacks",
        ),
        pytest.param(
            "random-picker", {"fallbacks": -1}, r"'fallbacks' must be >= 0", id="negative-fallbacks"
        ),
        pytest.param(
            "queue-scorer",
            {"anything": 1},
            r"'anything' is not known \(known "
            r"parameters: none\)",
            id="scorer-without-parameters",
        ),
        pytest.param(
            "queue-scorer",
            ["not", "a", "mapping"],
            r"parameters must be a mapping",
            id="not-a-mapping",
        ),
    ],
)
def test_bad_parameters_name_plugin_and_parameter(
    type_name: str, parameters: Any, message: str
) -> None:
    with pytest.raises(SchedulerConfigError, match=message) as caught:
        builtins().create(type_name, "mine", parameters)
    assert f"plugin 'mine' (type '{type_name}')" in str(caught.value)


def test_factory_value_errors_are_wrapped() -> None:
    def broken(name: str, parameters: Mapping[str, Any]) -> Plugin:
        raise ValueError("boom")

    registry = PluginRegistry()
    registry.register("broken", broken)
    with pytest.raises(SchedulerConfigError, match=r"plugin 'b' \(type 'broken'\).*boom"):
        registry.create("broken", "b", {})
