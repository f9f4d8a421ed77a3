"""A request that asks for its scores (``LLMRequest.explain``, the Pick API's
include_scores) gets every candidate's total and each scorer's weighted share, and the
same choice as without."""

from __future__ import annotations

from epp.scheduling.scheduler import build_scheduler, default_scheduler_config
from epp.scheduling.types import LLMRequest
from tests.unit.directors import POD_A, POD_B, POD_C, fresh_store


def test_explained_scores_add_up_and_change_nothing() -> None:
    store = fresh_store({POD_A: {"m"}, POD_B: {"m"}, POD_C: {"m"}})
    for endpoint, waiting in zip(store.all(), (0, 4, 9), strict=True):
        endpoint.metrics = type(endpoint.metrics)(
            waiting_requests=waiting, updated_at=endpoint.metrics.updated_at
        )
    # Two schedulers in the same state: one decision changes what the next sees (the
    # prefix index, the no-hit LRU).
    plain = build_scheduler(default_scheduler_config()).schedule(
        LLMRequest("r1", "m", "hello"), store.all()
    )
    explained = build_scheduler(default_scheduler_config()).schedule(
        LLMRequest("r2", "m", "hello", explain=True), store.all()
    )
    assert plain.scores == ()
    assert explained.primary is plain.primary
    assert {s.endpoint.address for s in explained.scores} == {POD_A, POD_B, POD_C}
    by_address = {s.endpoint.address: s for s in explained.scores}
    for score in explained.scores:
        shares = dict(score.by_scorer)
        assert "queue-scorer/queue-scorer" in shares
        assert abs(score.total - sum(shares.values())) < 1e-9
    queue = {a: dict(s.by_scorer)["queue-scorer/queue-scorer"] for a, s in by_address.items()}
    assert queue[POD_A] > queue[POD_B] > queue[POD_C]  # the shorter queue scores higher
    assert by_address[explained.primary.address].total == max(s.total for s in explained.scores)
