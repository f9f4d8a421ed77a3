"""The plugin registry, built-in plugins' completeness and parameter validation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.plugin import SettingsPlugin
from epp.scheduling.registry import NOT_IMPLEMENTED, PluginRegistry, register_builtin_plugins
from epp.scheduling.scorers import queue
from epp.scheduling.types import Filter, Picker, Plugin, PostPick, Scorer

BUILTIN_TYPES = {
    "candidate-sample-filter",
    "prefer-fresh-filter",
    "label-selector-filter",
    "by-label-selector",
    "by-label",
    "decode-filter",
    "queue-scorer",
    "kv-cache-utilization-scorer",
    "inflight-load-scorer",
    "prefix-cache-scorer",
    "active-request-scorer",
    "running-requests-size-scorer",
    "lora-affinity-scorer",
    "session-affinity-scorer",
    "no-hit-lru-scorer",
    "max-score-picker",
    "random-picker",
    "weighted-random-picker",
    "approx-prefix-cache-producer",
    "single-profile-handler",
}
# Types that need parameters to build at all.
REQUIRED_PARAMETERS: dict[str, dict[str, Any]] = {
    "by-label": {"label": "tier", "validValues": ["gold"]},
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
    parameters = REQUIRED_PARAMETERS.get(type_name, {})
    plugin = builtins().create(type_name, f"my-{type_name}", parameters)
    assert isinstance(plugin, Plugin)
    # by-label-selector is label-selector-filter under its deprecated name.
    expected = "label-selector-filter" if type_name == "by-label-selector" else type_name
    assert (plugin.typed_name.type, plugin.typed_name.name) == (expected, f"my-{type_name}")
    roles = [role for role in (Filter, Scorer, Picker, PostPick) if isinstance(plugin, role)]
    assert roles or isinstance(plugin, SettingsPlugin), f"{type_name} has no scheduling role"


@pytest.mark.parametrize("type_name", sorted(NOT_IMPLEMENTED))
def test_reference_plugins_epp_lacks_fail_naming_the_plugin_and_the_way_out(
    type_name: str,
) -> None:
    with pytest.raises(SchedulerConfigError) as caught:
        builtins().create(type_name, "mine", {})
    message = str(caught.value)
    assert f"'{type_name}' of the reference EPP is not implemented" in message
    assert NOT_IMPLEMENTED[type_name] in message
    assert type_name not in builtins()


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
            r"'blocksize' is not known \(known parameters: autoTune, blockSize, ",
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
