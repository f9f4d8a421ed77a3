"""The scheduler's fast path against a straightforward computation (issue 10).

The fast path (ScoreAdder scorers, the max-score picker's ``pick_scores``, the prefix
index's C-level add and match, the prefer-fresh filter's one-comparison check) must give
the very totals and picks of the plain formulas: a reference scheduler written here from
DESIGN.md's definitions, with its own prefix LRUs, runs beside the real one over random
endpoint states, the same seeded random numbers, and request sequences whose prompts
share prefixes. Any difference in a total (even one ulp, which can split a tie), in the
random numbers drawn, or in the index's LRU order shows up as a different pick within a
few requests; thousands of compared picks leave chance no way to pass it.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.scheduling.filters.prefer_fresh import PreferFreshFilter
from epp.scheduling.pickers.max_score import MaxScorePicker
from epp.scheduling.prefix_index import PrefixIndex
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.registry import PluginRegistry, register_builtin_plugins
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.scorers.prefix_cache import PrefixCacheScorer, prompt_block_hashes
from epp.scheduling.types import CycleState, LLMRequest

NOW = 10_000.0
STALENESS_S = 2.0
BLOCK_SIZE = 8
MAX_BLOCKS = 12
CAPACITY = 40  # small, so the LRUs evict all the time


@dataclass(frozen=True)
class Profile:
    """A profile as the reference computes it: (scorer type, weight, parameters)."""

    name: str
    scorers: tuple[tuple[str, float, dict[str, Any]], ...]


PROFILES = [
    Profile(
        "default",
        (
            ("queue-scorer", 1.0, {}),
            ("prefix-cache-scorer", 3.0, {}),
            ("inflight-load-scorer", 4.0, {"gapScale": 128.0}),
        ),
    ),
    # Small weights and a small gap scale: totals that tie only if summed exactly alike.
    Profile(
        "mixed",
        (
            ("kv-cache-utilization-scorer", 0.7, {}),
            ("inflight-load-scorer", 0.3, {"gapScale": 7.0}),
            ("prefix-cache-scorer", 1.1, {}),
            ("queue-scorer", 0.9, {}),
        ),
    ),
    Profile(
        "prefix-first",
        (
            ("prefix-cache-scorer", 3.0, {}),
            ("inflight-load-scorer", 2.0, {}),
            ("queue-scorer", 2.0, {}),
        ),
    ),
]


class RecordingPicker(MaxScorePicker):
    """The real max-score picker; remembers the totals it was handed."""

    last_scores: list[float]

    def pick_scores(
        self, cycle: CycleState, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        self.last_scores = list(scores)
        return super().pick_scores(cycle, endpoints, scores)


def fast_scheduler(profile: Profile, seed: int) -> tuple[Scheduler, RecordingPicker, PrefixIndex]:
    """The real plugins, built by their factories from config parameters."""
    registry = register_builtin_plugins(PluginRegistry())
    scorers = []
    index: PrefixIndex | None = None
    for type_name, weight, params in profile.scorers:
        if type_name == "prefix-cache-scorer":
            params = {
                "blockSize": BLOCK_SIZE,
                "maxPrefixBlocksToMatch": MAX_BLOCKS,
                "lruCapacityPerServer": CAPACITY,
            }
        scorer = registry.create(type_name, type_name, params)
        if isinstance(scorer, PrefixCacheScorer):
            index = scorer.index
        scorers.append(WeightedScorer(scorer, weight))  # type: ignore[arg-type]
    assert index is not None
    picker = RecordingPicker("picker", rng=random.Random(seed))
    fresh = PreferFreshFilter(staleness_s=STALENESS_S, clock=lambda: NOW)
    return Scheduler(SchedulerProfile("default", [fresh], scorers, picker)), picker, index


class ReferenceScheduler:
    """DESIGN.md's formulas, one endpoint at a time, and per-endpoint LRUs."""

    def __init__(self, profile: Profile, seed: int) -> None:
        self.profile = profile
        self.rng = random.Random(seed)
        self.lrus: dict[Endpoint, OrderedDict[int, None]] = {}
        self.last_totals: list[float] = []

    def schedule(self, request: LLMRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        fresh = [
            ep
            for ep in candidates
            if ep.metrics.updated_at != 0.0 and NOW - ep.metrics.updated_at <= STALENESS_S
        ]
        endpoints = fresh or candidates
        hashes = prompt_block_hashes(request.model, request.prompt, BLOCK_SIZE, MAX_BLOCKS)
        totals = [0.0] * len(endpoints)
        for type_name, weight, params in self.profile.scorers:
            scores = self.scores(type_name, params, endpoints, hashes)
            totals = [
                t + weight * min(max(s, 0.0), 1.0) for t, s in zip(totals, scores, strict=True)
            ]
        self.last_totals = totals
        picked = self.pick(list(zip(endpoints, totals, strict=True)))
        if hashes:
            self.record(picked[0], hashes)
        return picked

    def scores(
        self, type_name: str, params: dict[str, Any], endpoints: list[Endpoint], hashes: list[int]
    ) -> list[float]:
        if type_name == "queue-scorer":
            return self.min_max([ep.metrics.waiting_requests for ep in endpoints])
        if type_name == "kv-cache-utilization-scorer":
            return [1.0 - ep.metrics.kv_cache_usage for ep in endpoints]
        if type_name == "inflight-load-scorer":
            loads = [ep.inflight_requests for ep in endpoints]
            scale = params.get("gapScale", 0.0)
            if not scale:
                return self.min_max(loads)
            least = min(loads)
            return [1.0 - min(n - least, scale) / scale for n in loads]
        assert type_name == "prefix-cache-scorer"
        if not hashes:
            return [0.0] * len(endpoints)
        out = []
        for ep in endpoints:
            lru = self.lrus.get(ep, OrderedDict())
            depth = 0
            while depth < len(hashes) and hashes[depth] in lru:
                depth += 1
            out.append(depth / len(hashes))
        return out

    @staticmethod
    def min_max(values: list[int]) -> list[float]:
        lo, hi = min(values), max(values)
        return [1.0] * len(values) if hi == lo else [(hi - v) / (hi - lo) for v in values]

    def pick(self, scored: list[tuple[Endpoint, float]]) -> list[Endpoint]:
        """Best first; ties in random order, drawn as the max-score picker draws them."""
        ranked = sorted(scored, key=lambda item: item[1], reverse=True)
        limit = min(3, len(ranked))
        out: list[Endpoint] = []
        i = 0
        while len(out) < limit:
            group = [item for item in ranked[i:] if item[1] == ranked[i][1]]
            i += len(group)
            if len(group) == 1:
                out.append(group[0][0])
                continue
            for _ in range(min(limit - len(out), len(group))):
                out.append(group.pop(int(self.rng.random() * len(group)))[0])
        return out

    def record(self, endpoint: Endpoint, hashes: list[int]) -> None:
        lru = self.lrus.setdefault(endpoint, OrderedDict())
        for h in reversed(hashes):
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
        while len(lru) > CAPACITY:
            lru.popitem(last=False)


def random_metrics(rng: random.Random, spread: int) -> Metrics:
    age = rng.choice([0.5, 1.0, STALENESS_S, 2.5, 30.0])
    return Metrics(
        waiting_requests=rng.randrange(spread),
        kv_cache_usage=rng.choice([0.0, 0.25, 0.5, 1.0, 1.2, -0.1, rng.random()]),
        updated_at=0.0 if rng.random() < 0.02 else NOW - age * rng.random() * 1.5,
    )


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
@pytest.mark.parametrize("seed", range(6))
def test_fast_path_picks_and_totals_match_the_plain_formulas(profile: Profile, seed: int) -> None:
    rng = random.Random(seed)
    count = [3, 16, 40, 200][seed % 4]
    spread = rng.choice([2, 4, 50])  # few distinct loads (many ties) to many
    endpoints = [Endpoint(f"10.0.{i // 250}.{i % 250}:8000") for i in range(count)]
    for ep in endpoints:
        ep.metrics = random_metrics(rng, spread)
        ep.inflight_requests = rng.randrange(spread)
    fast, picker, index = fast_scheduler(profile, seed)
    reference = ReferenceScheduler(profile, seed)
    heads = ["".join(rng.choice("abc") for _ in range(BLOCK_SIZE * 4)) for _ in range(5)]
    compared = 0
    for step in range(250):
        prompt = rng.choice(heads)[: rng.randrange(BLOCK_SIZE * 4)] + "".join(
            rng.choice("ab") for _ in range(rng.randrange(BLOCK_SIZE * (MAX_BLOCKS + 2)))
        )
        request = LLMRequest(f"r{step}", rng.choice(["m", "m", "n"]), prompt)
        candidates = [ep for ep in endpoints if rng.random() < 0.9] or endpoints
        got = fast.schedule(request, candidates).endpoints
        want = reference.schedule(request, candidates)
        assert picker.last_scores == reference.last_totals, f"step {step}"
        assert got == want, f"step {step}"
        compared += 1
        got[0].request_routed()  # what the director does
        for ep in rng.sample(endpoints, k=min(len(endpoints), 3)):  # scrapes and finishes
            ep.metrics = random_metrics(rng, spread)
            ep.inflight_requests = max(0, ep.inflight_requests - rng.randrange(2))
    for ep, lru in reference.lrus.items():
        assert index.hashes_of(ep) == list(lru)
    assert index.size() == sum(len(lru) for lru in reference.lrus.values())
    assert compared == 250
