"""prefer-fresh-filter: keep fresh endpoints, or all of them when none is fresh."""

from __future__ import annotations

import pytest

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.scheduling.filters.prefer_fresh import PreferFreshFilter, factory
from epp.scheduling.types import CycleState, LLMRequest

NOW = 1_000.0


def endpoint(name: str, age_s: float | None) -> Endpoint:
    """An endpoint scraped ``age_s`` seconds before NOW; None = never scraped."""
    updated_at = 0.0 if age_s is None else NOW - age_s
    return Endpoint(name, metrics=Metrics(updated_at=updated_at))


@pytest.mark.parametrize(
    ("ages", "staleness_s", "kept"),
    [
        pytest.param({"a": 0.1, "b": 5.0}, 2.0, ["a"], id="drops-stale"),
        pytest.param({"a": 0.1, "b": 1.9}, 2.0, ["a", "b"], id="all-fresh"),
        pytest.param({"a": 2.0}, 2.0, ["a"], id="at-threshold-is-fresh"),
        pytest.param({"a": 3.0, "b": 9.0}, 2.0, ["a", "b"], id="all-stale-keeps-all"),
        pytest.param({"a": None, "b": None}, 2.0, ["a", "b"], id="cold-start-keeps-all"),
        pytest.param({"a": None, "b": 0.5}, 2.0, ["b"], id="never-scraped-dropped"),
        pytest.param({"a": 3.0, "b": 9.0}, 10.0, ["a", "b"], id="custom-staleness"),
    ],
)
def test_filter(ages: dict[str, float | None], staleness_s: float, kept: list[str]) -> None:
    eps = [endpoint(name, age) for name, age in ages.items()]
    flt = PreferFreshFilter(staleness_s=staleness_s, clock=lambda: NOW)
    result = flt.filter(CycleState(), LLMRequest("r", "m", ""), eps)
    assert [ep.address for ep in result] == kept


def test_factory_reads_staleness_seconds() -> None:
    flt = factory("fresh", {"stalenessSeconds": 0.5})
    assert flt._staleness_s == 0.5
    assert factory("fresh", {})._staleness_s == 2.0
