"""Objective priorities by header, and the saturation check that sheds sheddable work."""

from __future__ import annotations

import time

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.requestcontrol.admission import SaturationDetector
from epp.requestcontrol.objectives import (
    OBJECTIVE_HEADER,
    OBJECTIVE_HEADERS,
    Objectives,
    priorities_from_objects,
)


def objective(name: str, priority: object, pool: str = "pool") -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": {"priority": priority, "poolRef": {"name": pool}}}


def test_priority_comes_from_the_named_objective() -> None:
    objectives = Objectives(
        priorities_from_objects(
            [
                objective("batch", -1),
                objective("chat", 10),
                objective("elsewhere", 5, "other"),
                objective("broken", "high"),
            ],
            "pool",
        )
    )
    assert objectives.priority({OBJECTIVE_HEADER: "batch"}) == -1
    assert objectives.priority({OBJECTIVE_HEADER: "chat"}) == 10
    assert objectives.priority({OBJECTIVE_HEADER: "elsewhere"}) == 0
    assert objectives.priority({OBJECTIVE_HEADER: "broken"}) == 0
    assert objectives.priority({}) == 0


def endpoint(waiting: int, kv: float, *, age_s: float = 0.0) -> Endpoint:
    ep = Endpoint(address="10.0.0.1:8000", models=None)
    ep.metrics = Metrics(
        waiting_requests=waiting, kv_cache_usage=kv, updated_at=time.monotonic() - age_s
    )
    return ep


def test_the_current_and_the_legacy_objective_headers_are_read() -> None:
    objectives = Objectives({"batch": -1, "chat": 10})
    assert OBJECTIVE_HEADERS == ("x-llm-d-inference-objective", "x-gateway-inference-objective")
    assert objectives.priority({"x-llm-d-inference-objective": "chat"}) == 10
    assert objectives.priority({"x-gateway-inference-objective": "batch"}) == -1
    both = {"x-gateway-inference-objective": "batch", "x-llm-d-inference-objective": "chat"}
    assert objectives.priority(both) == 10  # the current name first, as the reference


def test_saturation_uses_the_reference_thresholds() -> None:
    detector = SaturationDetector()
    assert not detector.saturated([endpoint(0, 0.1), endpoint(4, 0.5)])
    assert detector.saturated([endpoint(5, 0.1), endpoint(6, 0.2)])  # queues at 5+
    assert detector.saturated([endpoint(0, 0.85), endpoint(0, 0.9)])  # KV over 0.8
    assert detector.saturated([endpoint(10, 0.0), endpoint(0, 0.0)])  # mean of 2 and 0
    assert not detector.saturated([endpoint(4, 0.0), endpoint(0, 0.0)])
    assert detector.saturated([endpoint(0, 0.0, age_s=10), endpoint(5, 0.0)])  # stale = full
    assert detector.saturated([])


def test_configured_objectives_stay_under_the_watched_ones() -> None:
    objectives = Objectives({"batch": -1, "chat": 10})
    objectives.replace({"chat": 3, "bulk": -2})  # InferenceObjectives win by name
    assert [
        objectives.priority({OBJECTIVE_HEADER: name}) for name in ("batch", "chat", "bulk")
    ] == [-1, 3, -2]
    objectives.replace({})
    assert objectives.priority({OBJECTIVE_HEADER: "chat"}) == 10


def test_saturation_thresholds_are_configurable() -> None:
    detector = SaturationDetector(queue_threshold=20, kv_threshold=0.95)
    assert not detector.saturated([endpoint(10, 0.9)])
    assert detector.saturated([endpoint(20, 0.0)])
