"""prefix-cache-scorer in deferred mode: picks noted at once, inserted into the index
later, and every match in between the same as with the index kept in step."""

from __future__ import annotations

import asyncio
import random

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.scorers.prefix_cache import _MAX_PENDING, PrefixCacheScorer, _leading_run
from epp.scheduling.types import CycleState, LLMRequest
from tests.unit.directors import POD_A, POD_B, POD_C, director_over, fresh_store

BLOCK = 16


def scorer(deferred: bool, capacity: int = 40) -> PrefixCacheScorer:
    s = PrefixCacheScorer(block_size=BLOCK, max_prefix_blocks=64, lru_capacity_per_server=capacity)
    s.set_deferred(deferred)
    return s


def matched(s: PrefixCacheScorer, prompt: str) -> dict[Endpoint, int]:
    return s.matched(CycleState(), LLMRequest("r", "m", prompt)) or {}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("capacity", [10_000, 40])
def test_deferred_matches_are_the_synchronous_index_ones(seed: int, capacity: int) -> None:
    """Equal while nothing is evicted; at the LRU's edge (a tiny capacity here) entries a
    noted pick will push out still count until it is inserted, never fewer. After each
    flush the two indexes are the same, entry for entry, in LRU order."""
    rng = random.Random(seed)
    eps = [Endpoint(f"10.0.0.{i}:8000") for i in range(5)]
    # Prompts sharing prefixes of every length, short and long (past the capacity).
    stems = ["".join(rng.choice("ab") for _ in range(BLOCK * 12)) for _ in range(4)]
    now, later = scorer(False, capacity), scorer(True, capacity)
    for step in range(1_500):
        stem = rng.choice(stems)
        prompt = stem[: rng.randrange(0, len(stem))] + str(rng.random()) * rng.randrange(0, 9)
        # Most picks are noted with the cycle that matched (whose hashes, for a
        # prompt told a miss by its first block, were never computed), the rest without.
        cycle = CycleState()
        deferred = later.matched(cycle, LLMRequest("r", "m", prompt)) or {}
        synchronous = matched(now, prompt)
        if capacity > 1_000:
            assert deferred == synchronous, f"step {step}"
        else:
            assert all(deferred.get(ep, 0) >= n for ep, n in synchronous.items()), step
        roll = rng.random()
        if roll < 0.02:
            gone = [rng.choice(eps)]
            now.on_endpoints_removed(gone)
            later.on_endpoints_removed(gone)
            continue
        chosen = rng.choice(eps)
        now.on_pick(CycleState(), LLMRequest("r", "m", prompt), chosen)
        later.on_pick(cycle if roll < 0.65 else CycleState(), LLMRequest("r", "m", prompt), chosen)
        if roll < 0.3:
            later.flush_deferred()
            for ep in eps:
                assert later.index.hashes_of(ep) == now.index.hashes_of(ep)


def test_pending_picks_stay_bounded_without_a_flush() -> None:
    s = scorer(True, capacity=10_000)
    ep = Endpoint("10.0.0.1:8000")
    for i in range(_MAX_PENDING * 3 + 1):
        s.on_pick(CycleState(), LLMRequest("r", "m", f"{i:016d}" * 2), ep)
        assert len(s._pending) < _MAX_PENDING
    assert s.index.size() > 0


def test_leaving_deferred_mode_inserts_what_was_noted() -> None:
    s = scorer(True)
    ep = Endpoint("10.0.0.1:8000")
    s.on_pick(CycleState(), LLMRequest("r", "m", "x" * BLOCK * 3), ep)
    assert s.index.size() == 0 and matched(s, "x" * BLOCK * 3) == {ep: 3}
    s.set_deferred(False)
    assert s.index.size() == 3


@pytest.mark.parametrize(
    ("hashes", "held", "run"),
    [([], [1], 0), ([1], [], 0), ([1, 2, 3], [1, 2, 3], 3), ([1, 2, 3], [1, 2], 2),
     ([1, 2], [1, 2, 3], 2), ([1, 2, 3], [9, 8, 7], 0), ([1, 2, 3, 4, 5], [1, 2, 3, 7, 8], 3)],
)  # fmt: skip
def test_leading_run(hashes: list[int], held: list[int], run: int) -> None:
    assert _leading_run(hashes, held) == run


@pytest.mark.asyncio
async def test_the_director_inserts_on_the_next_loop_turn_and_routes_the_same_meanwhile() -> None:
    director = director_over(fresh_store({POD_A: ["m"], POD_B: ["m"], POD_C: ["m"]}))
    (prefix,) = [p for p in director.scheduler.plugins if isinstance(p, PrefixCacheScorer)]
    body = b'{"model": "m", "messages": [{"role": "user", "content": "%s"}]}' % (b"q" * 4096)
    first = director.route_body(body, request_id="1", headers={})
    assert prefix.index.size() == 0  # noted, not yet inserted
    second = director.route_body(body, request_id="2", headers={})
    assert second.endpoints[0] == first.endpoints[0]  # the noted pick counted
    await asyncio.sleep(0)
    assert prefix.index.hashes_of(first.endpoints[0])
    assert prefix._pending == []
