"""build_scheduler_from_config: the scheduler the settings describe, staleness and
weights included."""

from __future__ import annotations

import argparse
import re
import time

import pytest

from epp.config import Config, add_serve_arguments, build_scheduler_from_config, load_config
from epp.datalayer.endpoint import Endpoint, Metrics
from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.types import LLMRequest

STRATEGIES = [None, "DEFAULT", "PREFIX_CACHE"]


def load(*argv: str, env: dict[str, str] | None = None) -> Config:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return load_config(parser.parse_args(list(argv)), environ=env or {})


def routable(config: Config, routing_strategy: str | None = None) -> set[str]:
    """What the scheduler may route to, of a pod scraped 0.1 s ago and one scraped 1 s ago
    (its picker returns up to three endpoints, so every one the filters keep)."""
    now = time.monotonic()
    endpoints = [
        Endpoint("fresh:8000", metrics=Metrics(updated_at=now - 0.1)),
        Endpoint("older:8000", metrics=Metrics(updated_at=now - 1.0)),
    ]
    scheduler = build_scheduler_from_config(config, routing_strategy)
    result = scheduler.schedule(LLMRequest("r", "m", "a prompt"), endpoints)
    return {endpoint.address for endpoint in result.endpoints}


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s or "configured")
def test_the_staleness_flag_decides_what_prefer_fresh_keeps(strategy: str | None) -> None:
    assert routable(load(), strategy) == {"fresh:8000", "older:8000"}  # 2 s by default
    stricter = load("--metrics-staleness-threshold", "500ms")
    assert routable(stricter, strategy) == {"fresh:8000"}


def test_the_environment_and_the_file_set_the_same_threshold() -> None:
    assert routable(load(env={"EPP_METRICS_STALENESS_THRESHOLD": "0.5"})) == {"fresh:8000"}
    in_file = load("--config-text", "dataLayer: {metricsStalenessThreshold: 500ms}")
    assert routable(in_file) == {"fresh:8000"}


def test_the_filters_own_parameter_overrides_the_flag() -> None:
    profile = (
        "plugins:\n"
        "  - {type: prefer-fresh-filter, parameters: {stalenessSeconds: 5}}\n"
        "  - {type: queue-scorer}\n"
        "  - {type: max-score-picker}\n"
        "schedulingProfiles:\n"
        "  - plugins:\n"
        "      - {pluginRef: prefer-fresh-filter}\n"
        "      - {pluginRef: queue-scorer, weight: 1}\n"
        "      - {pluginRef: max-score-picker}\n"
    )
    config = load("--config-text", profile, "--metrics-staleness-threshold", "500ms")
    assert routable(config) == {"fresh:8000", "older:8000"}
    # The configured parameters are kept as given; the flag fills in only where none is.
    assert config.scheduler.plugins[0].parameters == {"stalenessSeconds": 5}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            [
                "--config-text",
                "plugins: [{type: queue-scorer}, {type: max-score-picker}]\n"
                "schedulingProfiles:\n"
                "  - plugins: [{pluginRef: queue-scorer, weight: heavy}, "
                "{pluginRef: max-score-picker}]\n",
            ],
            "scorer 'queue-scorer' weight must be a finite number >= 0, got 'heavy'",
        ),
        (
            ["--scorer-weight", "queue-scorer=-1"],
            "scorer 'queue-scorer' weight must be a finite number >= 0, got -1.0",
        ),
        (
            ["--scorer-weight", "queue-scorer=nan"],
            "scorer 'queue-scorer' weight must be a finite number >= 0, got nan",
        ),
    ],
    ids=["file-text", "flag-negative", "flag-nan"],
)
def test_weights_from_the_file_and_flags_are_checked_where_the_scheduler_is_built(
    argv: list[str], message: str
) -> None:
    config = load(*argv)
    with pytest.raises(SchedulerConfigError, match=re.escape(message)):
        build_scheduler_from_config(config)
