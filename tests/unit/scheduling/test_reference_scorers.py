"""The reference's scorers as it documents them: scores on crafted endpoints."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.registry import PluginRegistry, register_builtin_plugins
from epp.scheduling.scheduler import (
    PluginSpec,
    ProfilePluginRef,
    ProfileSpec,
    SchedulerConfig,
    build_scheduler,
)
from epp.scheduling.scorers.no_hit_lru import NoHitLruScorer
from epp.scheduling.scorers.prefix_cache import PrefixCacheScorer
from epp.scheduling.types import CycleState, LLMRequest, Plugin, Scorer

REQUEST = LLMRequest("r", "m", "")


def create(type_name: str, parameters: Mapping[str, Any] | None = None) -> Plugin:
    return register_builtin_plugins(PluginRegistry()).create(type_name, type_name, parameters)


def scores(scorer: Plugin, endpoints: list[Endpoint], request: LLMRequest = REQUEST) -> list[float]:
    assert isinstance(scorer, Scorer)
    return list(scorer.score(CycleState(), request, endpoints))


def pods(count: int, **metrics: Any) -> list[Endpoint]:
    endpoints = [Endpoint(f"10.0.0.{i + 1}:8000") for i in range(count)]
    for endpoint in endpoints:
        endpoint.metrics = Metrics(**metrics, updated_at=time.monotonic())
    return endpoints


def with_inflight(*counts: int) -> list[Endpoint]:
    endpoints = pods(len(counts))
    for endpoint, count in zip(endpoints, counts, strict=True):
        endpoint.inflight_requests = count
    return endpoints


@pytest.mark.parametrize(
    ("parameters", "counts", "expected"),
    [
        ({}, (0, 2, 4), [1.0, 0.5, 0.0]),
        ({}, (3, 3), [0.0, 0.0]),  # equally busy: both are the busiest
        ({"idleThreshold": 2}, (1, 2, 4, 8), [1.0, 1.0, 0.5, 0.0]),
        ({"maxBusyScore": 0.5}, (0, 4, 8), [1.0, 0.25, 0.0]),
        ({"requestTimeout": "2m"}, (0, 0), [1.0, 1.0]),  # deprecated there, ignored here
    ],
    ids=["min-max-of-busiest", "all-busy", "idle-threshold", "gap", "deprecated-timeout"],
)
def test_active_request_scorer(
    parameters: dict[str, Any], counts: tuple[int, ...], expected: list[float]
) -> None:
    assert scores(create("active-request-scorer", parameters), with_inflight(*counts)) == expected


def test_active_request_scorer_refuses_a_gap_out_of_range() -> None:
    with pytest.raises(SchedulerConfigError, match=r"'maxBusyScore' must be at most 1\.0"):
        create("active-request-scorer", {"maxBusyScore": 1.5})


def test_running_requests_size_scorer_is_min_max_over_running_requests() -> None:
    endpoints = pods(3)
    for endpoint, running in zip(endpoints, (2, 6, 10), strict=True):
        endpoint.metrics = Metrics(running_requests=running, waiting_requests=50 - running)
    assert scores(create("running-requests-size-scorer"), endpoints) == [1.0, 0.5, 0.0]
    assert scores(create("running-requests-size-scorer"), pods(2, running_requests=4)) == [1.0, 1.0]


def lora_pod(running: set[str], waiting: set[str], max_lora: int | None) -> Endpoint:
    endpoint = Endpoint("10.0.0.9:8000")
    endpoint.metrics = Metrics(
        lora_running=frozenset(running), lora_waiting=frozenset(waiting), max_lora=max_lora
    )
    return endpoint


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (lora_pod({"sql"}, set(), 1), 1.0),  # running, even with no slot left
        (lora_pod({"other"}, set(), 2), 0.8),  # a free slot
        (lora_pod({"other"}, {"sql"}, 3), 0.8),  # waiting, but a slot is free: as the reference
        (lora_pod({"other"}, {"sql"}, 2), 0.6),  # waiting, no slot
        (lora_pod({"a", "b"}, set(), 2), 0.0),  # full, neither running nor waiting
        (lora_pod(set(), set(), None), 0.0),  # no LoRA info: no slots
    ],
    ids=["running", "free-slot", "waiting-with-slot", "waiting-full", "full", "no-info"],
)
def test_lora_affinity_scorer(pod: Endpoint, expected: float) -> None:
    request = LLMRequest("r", "sql", "")
    assert scores(create("lora-affinity-scorer"), [pod], request) == [expected]


# -- prefix-cache-scorer in the reference's terms, and no-hit-lru over it -------------------


def build(plugins: list[PluginSpec], refs: list[ProfilePluginRef]) -> Any:
    return build_scheduler(SchedulerConfig(plugins, [ProfileSpec("default", refs)]))


@pytest.mark.parametrize(
    ("parameters", "block_size", "max_blocks"),
    [
        ({}, 256, 256),  # epp's: 64 tokens, the reference's smallest block
        ({"blockSizeTokens": 16}, 64, 256),  # the scorer's (GIE v1.x) parameter: as given
        ({"blockSizeTokens": 32, "maxPrefixTokensToMatch": 4096}, 128, 128),
        ({"blockSize": 100, "maxPrefixBlocksToMatch": 10}, 100, 10),
        ({"maxPrefixBlocksToMatch": 10, "maxPrefixTokensToMatch": 1280}, 256, 20),  # tokens win
        ({"autoTune": False, "lruCapacityPerServer": 7}, 256, 256),
    ],
    ids=["epp-default", "tokens", "token-cap", "bytes", "token-cap-wins", "auto-tune"],
)
def test_prefix_scorer_takes_sizes_in_tokens_at_four_bytes_each(
    parameters: dict[str, Any], block_size: int, max_blocks: int
) -> None:
    scorer = create("prefix-cache-scorer", parameters)
    assert isinstance(scorer, PrefixCacheScorer)
    assert (scorer.settings.block_size, scorer.settings.max_blocks) == (block_size, max_blocks)
    assert scorer.prompt_chars == block_size * max_blocks


def test_prefix_scorer_takes_the_producers_settings() -> None:
    producer = PluginSpec(
        "approx-prefix-cache-producer",
        parameters={"maxPrefixTokensToMatch": 16384, "lruCapacityPerServer": 500},
    )
    scheduler = build(
        [producer, PluginSpec("prefix-cache-scorer")], [ProfilePluginRef("prefix-cache-scorer")]
    )
    (scorer,) = [p for p in scheduler.plugins if isinstance(p, PrefixCacheScorer)]
    # 16 tokens (the default), raised to 64 as the reference does, of 4 bytes each;
    # 16384 tokens / 64 per block.
    assert (scorer.settings.block_size, scorer.settings.max_blocks) == (256, 256)
    assert scorer.settings.lru_capacity_per_server == 500
    assert scheduler.prompt_chars == 256 * 256


def test_a_prefix_scorer_naming_a_missing_producer_fails() -> None:
    with pytest.raises(SchedulerConfigError, match="'gpu' names no approx-prefix-cache-producer"):
        build(
            [PluginSpec("prefix-cache-scorer", parameters={"prefixMatchInfoProducerName": "gpu"})],
            [ProfilePluginRef("prefix-cache-scorer")],
        )
    with pytest.raises(SchedulerConfigError, match="'blockSize' is set on the producer 'gpu'"):
        create("prefix-cache-scorer", {"prefixMatchInfoProducerName": "gpu", "blockSize": 8})


def test_prefix_scorer_blends_in_the_match_length() -> None:
    scorer = create(
        "prefix-cache-scorer",
        {"blockSize": 64, "matchLengthWeight": 0.5, "matchLengthScaleTokens": 64},
    )
    assert isinstance(scorer, PrefixCacheScorer)
    holder, other = pods(2)
    prompt = "x" * (64 * 4)  # four 64-byte blocks: 64 tokens, the scale
    request = LLMRequest("r", "m", prompt)
    scorer.on_pick(CycleState(), LLMRequest("r0", "m", prompt[:128]), holder)  # holds 2 of 4
    ratio, length = 2 / 4, (2 * 64 / (64 * 4)) ** 2
    assert scores(scorer, [holder, other], request) == [0.5 * length + 0.5 * ratio, 0.0]
    # The one-pass form adds the same numbers.
    assert scorer.add_scores(CycleState(), request, [holder, other], 2.0, [1.0, 1.0]) == [
        1.0 + 2.0 * (0.5 * length + 0.5 * ratio),
        1.0,
    ]


def cold_lru(parameters: dict[str, Any] | None = None) -> tuple[NoHitLruScorer, Any]:
    scheduler = build(
        [
            PluginSpec("prefix-cache-scorer"),
            PluginSpec("no-hit-lru-scorer", parameters=parameters or {}),
        ],
        [ProfilePluginRef("prefix-cache-scorer", 2), ProfilePluginRef("no-hit-lru-scorer", 1)],
    )
    (lru,) = [p for p in scheduler.plugins if isinstance(p, NoHitLruScorer)]
    assert isinstance(lru.prefix_scorer, PrefixCacheScorer)
    return lru, scheduler


def test_no_hit_lru_ranks_never_used_then_least_recently_cold() -> None:
    lru, scheduler = cold_lru()
    a, b, c, d = pods(4)
    unique = iter(f"{i:064d}" * 2 for i in range(100))  # prompts that share no block
    # Cold requests fill the pods in LRU order: never-used first, so all four get one.
    firsts = [
        scheduler.schedule(LLMRequest(f"r{i}", "m", next(unique)), [a, b, c, d]).primary
        for i in range(4)
    ]
    assert set(firsts) == {a, b, c, d}
    # Now a was cold-picked longest ago: it scores 1, the newest 0.
    request = LLMRequest("q", "m", next(unique))
    got = scores(lru, firsts, request)
    assert got == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    # A never-used pod outranks every used one.
    e = Endpoint("10.0.0.5:8000")
    assert scores(lru, [firsts[0], e], request) == [0.0, 1.0]


def test_no_hit_lru_is_neutral_for_a_warm_request_and_does_not_move_the_lru() -> None:
    lru, scheduler = cold_lru()
    a, b = pods(2)
    prompt = "y" * 256
    first = scheduler.schedule(LLMRequest("r1", "m", prompt), [a, b]).primary
    assert scores(lru, [a, b], LLMRequest("r2", "m", prompt)) == [0.5, 0.5]
    # The warm request goes to the holder (prefix 2 > LRU) and leaves the LRU as it was.
    assert scheduler.schedule(LLMRequest("r2", "m", prompt), [a, b]).primary is first
    other = b if first is a else a
    assert scores(lru, [first, other], LLMRequest("r3", "m", "z" * 256)) == [0.0, 1.0]


def test_no_hit_lru_adds_in_one_pass_what_its_scores_give() -> None:
    lru, scheduler = cold_lru()
    endpoints = pods(5)
    for i in range(3):  # three cold picks: an LRU of three, two pods never used
        scheduler.schedule(LLMRequest(f"r{i}", "m", f"{i:0128d}" * 2), endpoints)
    cold, warm = LLMRequest("c", "m", "c" * 256), LLMRequest("w", "m", f"{0:0128d}" * 2)
    for request in (cold, warm):
        given = scores(lru, endpoints, request)
        totals = [0.25 * i for i in range(5)]
        assert lru.add_scores(CycleState(), request, endpoints, 3.0, list(totals)) == [
            t + 3.0 * s for t, s in zip(totals, given, strict=True)
        ]
        assert lru.add_scores(CycleState(), request, endpoints, 3.0, None) == [
            3.0 * s for s in given
        ]
    assert scores(lru, endpoints, warm) == [0.5] * 5
    assert sorted(scores(lru, endpoints, cold)) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def reference_cold_scores(lru: list[Endpoint], candidates: list[Endpoint]) -> list[float]:
    """The reference's ranks, spelled out: never-used candidates first in candidate order,
    then the used ones by LRU place (oldest first) counted over the whole LRU."""
    places = {ep: i for i, ep in enumerate(lru)}
    never = [ep for ep in candidates if ep not in places]
    span = len(candidates) - 1
    ranks = {ep: k for k, ep in enumerate(never)}
    return [
        1.0 - ranks[ep] / span if ep in ranks else max(0.0, 1.0 - (len(never) + places[ep]) / span)
        for ep in candidates
    ]


def test_no_hit_lru_cold_scores_match_the_reference_ranks() -> None:
    """The table lookups give the reference's scores, for LRUs longer and shorter than
    the candidate list, with entries that are not candidates, in any candidate order."""
    rng = random.Random(5)
    everyone = pods(80)
    for _ in range(300):
        scorer = NoHitLruScorer(lru_size=rng.choice([4, 40, 1024]))
        for endpoint in rng.sample(everyone, rng.randrange(0, 80)):
            cycle = CycleState()
            scorer.score(cycle, REQUEST, [endpoint])  # cold: no prefix scorer
            scorer.on_pick(cycle, REQUEST, endpoint)
        candidates = rng.sample(everyone, rng.randrange(2, 80))
        want = reference_cold_scores(list(scorer._lru), candidates)
        got = scorer.score(CycleState(), LLMRequest("c", "m", ""), candidates)
        assert got == pytest.approx(want, abs=1e-12)
        totals = [rng.random() for _ in candidates]
        added = scorer.add_scores(CycleState(), LLMRequest("c", "m", ""), candidates, 0.5, totals)
        assert added == [t + 0.5 * g for t, g in zip(totals, got, strict=True)]


def test_no_hit_lru_scores_the_same_when_its_work_is_deferred() -> None:
    """Deferred, the LRU's places are rebuilt after the pick (flush) rather than by the
    next cold request; flushed or not yet, every score is the same as undeferred."""
    rng = random.Random(7)
    everyone = pods(40)
    plain, deferred = NoHitLruScorer(lru_size=16), NoHitLruScorer(lru_size=16)
    deferred.set_deferred(True)
    for step in range(400):
        candidates = rng.sample(everyone, rng.randrange(2, 40))
        request = LLMRequest(f"c{step}", "m", "")
        want = plain.score(CycleState(), request, candidates)
        assert deferred.score(CycleState(), request, candidates) == want
        chosen = rng.choice(candidates)
        for scorer in (plain, deferred):
            cycle = CycleState()
            scorer.score(cycle, request, [chosen])  # cold: no prefix scorer
            scorer.on_pick(cycle, request, chosen)
        if rng.random() < 0.5:
            deferred.flush_deferred()
        assert list(deferred._lru) == list(plain._lru)


@pytest.mark.parametrize("lora_first", [True, False])
def test_no_hit_lru_leaves_a_loaded_adapter_to_lora_affinity(lora_first: bool) -> None:
    """A short adapter request fills no prefix block, so it is cold; with the adapter
    loaded on a pod it stays there rather than being spread, whichever scorer runs first.
    For an adapter no pod has, the LRU spreads as ever."""
    refs = [ProfilePluginRef("lora-affinity-scorer", 1), ProfilePluginRef("no-hit-lru-scorer", 2)]
    scheduler = build(
        [PluginSpec("lora-affinity-scorer"), PluginSpec("no-hit-lru-scorer")],
        refs if lora_first else refs[::-1],
    )
    now = time.monotonic()
    with_adapter, *others = [
        Endpoint(
            f"10.0.0.{i}:8000",
            metrics=Metrics(
                lora_running=frozenset({"a1"} if i == 1 else set()),
                max_lora=1,
                models=frozenset({"base"}),
                updated_at=now,
            ),
        )
        for i in range(1, 4)
    ]
    candidates = [*others, with_adapter]
    picks = [
        scheduler.schedule(LLMRequest(f"r{i}", "a1", "hi"), candidates).primary for i in range(6)
    ]
    assert picks == [with_adapter] * 6
    # The base model (no pod runs it as an adapter): cold, spread over the LRU.
    spread = {
        scheduler.schedule(LLMRequest(f"b{i}", "base", "hi"), candidates).primary for i in range(3)
    }
    assert spread == set(candidates)


def test_no_hit_lru_counts_only_holders_among_the_candidates() -> None:
    """A request is warm when a candidate holds its prefix, however many pods hold it."""
    for holders in (1, 3, 20):
        lru, scheduler = cold_lru()
        endpoints = pods(holders + 2)
        prompt = "h" * 256
        for endpoint in endpoints[:holders]:
            scheduler.schedule(LLMRequest("r", "m", prompt), [endpoint])
        request = LLMRequest("q", "m", prompt)
        others = endpoints[holders:]
        assert scores(lru, endpoints, request) == [0.5] * len(endpoints)
        # Only pods that hold nothing of it as candidates: cold, ranked.
        assert scores(lru, others, request) == [1.0, 0.0]


def test_no_hit_lru_forgets_removed_endpoints_and_keeps_lru_size() -> None:
    lru, scheduler = cold_lru({"lruSize": 2})
    endpoints = pods(3)
    for i, endpoint in enumerate(endpoints):
        scheduler.schedule(LLMRequest(f"r{i}", "m", f"{i}" * 128), [endpoint])
    # Only the two newest are remembered: the oldest is "never used" again.
    assert scores(lru, endpoints, LLMRequest("q", "m", "q" * 128)) == [1.0, 0.5, 0.0]
    scheduler.on_endpoints_removed([endpoints[2]])
    assert scores(lru, endpoints[1:], LLMRequest("q", "m", "q" * 128)) == [0.0, 1.0]


def test_no_hit_lru_without_a_prefix_scorer_treats_every_request_as_cold() -> None:
    scheduler = build([PluginSpec("no-hit-lru-scorer")], [ProfilePluginRef("no-hit-lru-scorer")])
    (lru,) = [p for p in scheduler.plugins if isinstance(p, NoHitLruScorer)]
    assert lru.prefix_scorer is None
    a, b = pods(2)
    first = scheduler.schedule(LLMRequest("r", "m", "same" * 64), [a, b]).primary
    second = scheduler.schedule(LLMRequest("r", "m", "same" * 64), [a, b]).primary
    assert {first, second} == {a, b}


def test_no_hit_lru_names_a_prefix_scorer_that_must_exist() -> None:
    with pytest.raises(SchedulerConfigError, match="prefixPluginName 'cache' names no"):
        build(
            [PluginSpec("no-hit-lru-scorer", parameters={"prefixPluginName": "cache"})],
            [ProfilePluginRef("no-hit-lru-scorer")],
        )
