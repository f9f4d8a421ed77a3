"""The director's healthy candidates: its two-pass shortcut (every endpoint fresh, none
failing its scrapes, no back-off running) against ``is_healthy`` per endpoint, over
random endpoint states; any difference would change which pods a request may go to."""

from __future__ import annotations

import random
import time

import pytest

from epp.datalayer.endpoint import Metrics
from tests.unit.directors import director_over, fresh_store


@pytest.mark.parametrize("seed", range(40))
def test_the_shortcut_keeps_exactly_the_healthy_endpoints(seed: int) -> None:
    rng = random.Random(seed)
    count = rng.choice([1, 3, 40, 300])
    store = fresh_store({f"10.1.{i // 250}.{i % 250 + 1}:8000": {"m"} for i in range(count)})
    director = director_over(store)
    endpoints = store.all()
    now = time.monotonic()
    # Mostly all healthy (the shortcut's case), else one or a few of each kind of fault.
    faults = rng.choice([0, 0, 1, 3])
    for endpoint in rng.sample(endpoints, min(faults, count)):
        fault = rng.choice(["stale", "never", "failing", "backoff", "edge"])
        if fault == "stale":
            endpoint.metrics = Metrics(updated_at=now - 10.0)
        elif fault == "never":
            endpoint.metrics = Metrics()
        elif fault == "failing":
            endpoint.scrape_failures = rng.choice([2, 3, 7])
        elif fault == "backoff":
            director.health.record(endpoint, director.health.generation(endpoint), 503)
        else:  # just inside the staleness bound
            endpoint.metrics = Metrics(updated_at=now - director._saturation.staleness_s)
    expected = [ep for ep in endpoints if director.is_healthy(ep, now)]
    assert director._healthy(endpoints, now) == expected
    assert director._healthy([], now) == []
