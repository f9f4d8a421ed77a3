"""lora-affinity-scorer's residency prediction: what epp sent where, beyond the metric."""

from __future__ import annotations

import time
from collections.abc import Set

import pytest

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.scorers.lora_affinity import (
    KNOWN_ADAPTERS,
    SENT_PER_SLOT,
    LoraAffinityScorer,
    factory,
)
from epp.scheduling.types import CycleState, LLMRequest


def pod(address: str, running: Set[str] = frozenset(), max_lora: int | None = 2) -> Endpoint:
    endpoint = Endpoint(address)
    endpoint.metrics = Metrics(
        lora_running=frozenset(running), max_lora=max_lora, updated_at=time.monotonic()
    )
    return endpoint


def request(model: str) -> LLMRequest:
    return LLMRequest("r", model, "")


def route(
    scorer: LoraAffinityScorer, model: str, endpoints: list[Endpoint], to: int
) -> list[float]:
    """Score ``model`` over ``endpoints``, then record a pick of ``endpoints[to]``."""
    cycle = CycleState()
    scores = scorer.score(cycle, request(model), endpoints)
    scorer.on_pick(cycle, request(model), endpoints[to])
    return scores


def test_an_adapter_sent_to_a_pod_keeps_scoring_there_after_its_requests_end() -> None:
    a, b = pod("10.0.0.1:8000", {"sql"}), pod("10.0.0.2:8000")
    scorer = LoraAffinityScorer()
    assert route(scorer, "sql", [a, b], to=0) == [1.0, 0.8]  # running on a (learned)
    a.metrics = Metrics(max_lora=2, updated_at=time.monotonic())  # its requests ended
    assert scorer.score(CycleState(), request("sql"), [a, b]) == [1.0, 0.8]
    # The reference's scorer sees two identical pods.
    reference = LoraAffinityScorer(predict_residency=False)
    assert reference.score(CycleState(), request("sql"), [a, b]) == [0.8, 0.8]


def test_the_prediction_follows_the_lru_of_max_lora_slots() -> None:
    a = pod("10.0.0.1:8000", {"x", "y", "z"}, max_lora=3)
    scorer = LoraAffinityScorer()
    scorer.score(CycleState(), request("x"), [a])  # learns x, y, z
    a.metrics = Metrics(max_lora=2, updated_at=time.monotonic())
    for model in ("x", "y", "z"):
        route(scorer, model, [a], to=0)
    # Two slots: z and y are loaded, x was evicted.
    assert [scorer.score(CycleState(), request(m), [a])[0] for m in "xyz"] == [0.8, 1.0, 1.0]
    # z running takes a slot; of the others only the most recent (y) fits beside it.
    a.metrics = Metrics(lora_running=frozenset({"z"}), max_lora=2, updated_at=time.monotonic())
    assert [scorer.score(CycleState(), request(m), [a])[0] for m in "xyz"] == [0.8, 1.0, 1.0]
    # Two others running fill both slots: nothing epp sent is predicted any more.
    a.metrics = Metrics(lora_running=frozenset({"p", "q"}), max_lora=2, updated_at=time.monotonic())
    assert [scorer.score(CycleState(), request(m), [a])[0] for m in "yz"] == [0.0, 0.0]


def test_only_names_reported_as_adapters_take_predicted_slots() -> None:
    a, b = pod("10.0.0.1:8000"), pod("10.0.0.2:8000")
    scorer = LoraAffinityScorer()
    # Not yet seen in any endpoint's metric: sent, but no prediction.
    assert route(scorer, "sql", [a, b], to=0) == [0.8, 0.8]
    assert scorer.score(CycleState(), request("sql"), [a, b]) == [0.8, 0.8]
    # Base-model requests in between (the base never appears in the metric) take no slot.
    for _ in range(3):
        route(scorer, "base-model", [a, b], to=0)
    assert scorer.score(CycleState(), request("base-model"), [a, b]) == [0.8, 0.8]
    # Once b reports sql running, sql is known: a's earlier pick now predicts it there.
    b.metrics = Metrics(lora_running=frozenset({"sql"}), max_lora=2, updated_at=time.monotonic())
    assert scorer.score(CycleState(), request("sql"), [a, b]) == [1.0, 1.0]


def test_memory_per_endpoint_is_bounded() -> None:
    a = pod("10.0.0.1:8000", {"sql"}, max_lora=2)
    scorer = LoraAffinityScorer()
    route(scorer, "sql", [a], to=0)
    a.metrics = Metrics(max_lora=2, updated_at=time.monotonic())
    for i in range(SENT_PER_SLOT * 2):
        route(scorer, f"client-name-{i}", [a], to=0)
    assert scorer.score(CycleState(), request("sql"), [a]) == [0.8]  # pushed out


def test_pods_without_lora_info_get_no_prediction() -> None:
    a, b = pod("10.0.0.1:8000", {"sql"}), pod("10.0.0.2:8000", max_lora=None)
    scorer = LoraAffinityScorer()
    route(scorer, "sql", [a, b], to=1)
    assert scorer.score(CycleState(), request("sql"), [a, b]) == [1.0, 0.0]


def test_removed_endpoints_are_forgotten() -> None:
    a = pod("10.0.0.1:8000", {"sql"})
    scorer = LoraAffinityScorer()
    route(scorer, "sql", [a], to=0)
    a.metrics = Metrics(max_lora=2, updated_at=time.monotonic())
    scorer.on_endpoints_removed([a])
    assert scorer.score(CycleState(), request("sql"), [a]) == [0.8]


def test_learned_names_are_bounded() -> None:
    scorer = LoraAffinityScorer()
    for i in range(KNOWN_ADAPTERS + 10):
        scorer.score(CycleState(), request("x"), [pod("10.0.0.1:8000", {f"a{i}"})])
    a = pod("10.0.0.1:8000", max_lora=2)
    last = f"a{KNOWN_ADAPTERS + 9}"
    route(scorer, "a0", [a], to=0)  # forgotten: sent, but not predicted
    assert scorer.score(CycleState(), request("a0"), [a]) == [0.8]
    route(scorer, last, [a], to=0)
    assert scorer.score(CycleState(), request(last), [a]) == [1.0]


def test_parameters() -> None:
    assert factory("l", {}).predict_residency
    assert not factory("l", {"predictResidency": False}).predict_residency
    with pytest.raises(SchedulerConfigError):
        factory("l", {"slots": 2})


@pytest.mark.parametrize("totals", [None, [0.25, 1.5, 3.0]])
def test_add_scores_adds_what_score_gives_and_nothing_without_lora_info(
    totals: list[float] | None,
) -> None:
    scorer = LoraAffinityScorer()
    # No candidate reports LoRA info: every score is 0 and the totals come back as given.
    bare = [pod(f"10.0.0.{i}:8000", max_lora=None) for i in range(3)]
    assert scorer.score(CycleState(), request("a"), bare) == [0.0, 0.0, 0.0]
    added = scorer.add_scores(CycleState(), request("a"), bare, 2.0, totals)
    assert added == (totals if totals is not None else [0.0, 0.0, 0.0])
    # One does: the one-pass form adds weight * score, as the profile's own sum would.
    mixed = [pod("10.0.1.1:8000", {"a"}), pod("10.0.1.2:8000"), bare[0]]
    scores = scorer.score(CycleState(), request("a"), mixed)
    assert scores == [1.0, 0.8, 0.0]
    base = totals if totals is not None else [0.0] * 3
    assert scorer.add_scores(CycleState(), request("a"), mixed, 2.0, totals) == [
        t + 2.0 * s for t, s in zip(base, scores, strict=True)
    ]


def test_an_adapter_is_known_from_where_it_was_sent_before_any_scrape_shows_it() -> None:
    # A short request can end between two scrapes: the metric never names the adapter.
    # Sent to a LoRA-enabled pod whose series name another model as their base, it is an
    # adapter all the same, and the next request for it goes back to that pod.
    holder, other = pod("10.0.2.1:8000"), pod("10.0.2.2:8000")
    for endpoint in (holder, other):
        endpoint.metrics = Metrics(
            max_lora=2, models=frozenset({"qwen"}), updated_at=time.monotonic()
        )
    scorer = LoraAffinityScorer()
    route(scorer, "travel-helper-v1", [holder, other], to=0)
    assert route(scorer, "travel-helper-v1", [holder, other], to=0) == [1.0, 0.8]
    # The base model is not taken for an adapter: it holds no slot.
    route(scorer, "qwen", [holder, other], to=1)
    assert route(scorer, "qwen", [holder, other], to=1) == [0.8, 0.8]
