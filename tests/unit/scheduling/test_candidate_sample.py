"""candidate-sample-filter: a bounded, evenly spread sample of a large pool that keeps the
pods the scorers favour (issue 10: a decision at 1,024 endpoints within 2x of 256)."""

from __future__ import annotations

import random
import time
from collections import Counter
from itertools import pairwise

import pytest

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.filters.candidate_sample import (
    DEFAULT_SAMPLE_SIZE,
    CandidateSampleFilter,
    factory,
)
from epp.scheduling.scheduler import build_scheduler, default_scheduler_config
from epp.scheduling.scorers.prefix_cache import PrefixCacheScorer
from epp.scheduling.scorers.session_affinity import SessionAffinityScorer, encode_token
from epp.scheduling.spec import PluginSpec, ProfileSpec, SchedulerConfig
from epp.scheduling.types import CycleState, LLMRequest


def pool(count: int) -> list[Endpoint]:
    fresh = time.monotonic() + 86_400.0  # fresh for the whole test
    return [
        Endpoint(f"10.0.{i // 250}.{i % 250 + 1}:8000", metrics=Metrics(updated_at=fresh))
        for i in range(count)
    ]


def sampled(flt: CandidateSampleFilter, eps: list[Endpoint], req: LLMRequest) -> list[Endpoint]:
    return list(flt.filter(CycleState(), req, eps))


def scheduler_sampling(size: int, seed: int = 7) -> SchedulerConfig:
    """The default profile with the sample's size and seed set."""
    base = default_scheduler_config()
    plugins = [
        PluginSpec(p.type, parameters={"sampleSize": size, "seed": seed})
        if p.type == "candidate-sample-filter"
        else p
        for p in base.plugins
    ]
    return SchedulerConfig(plugins, base.profiles)


REQUEST = LLMRequest("r", "m", "")


@pytest.mark.parametrize("count", [0, 1, 255, 256])
def test_a_pool_within_the_sample_size_passes_whole(count: int) -> None:
    eps = pool(count)
    assert CandidateSampleFilter().filter(CycleState(), REQUEST, eps) is eps


def test_size_zero_turns_it_off() -> None:
    eps = pool(2000)
    assert factory("s", {"sampleSize": 0}).filter(CycleState(), REQUEST, eps) is eps


@pytest.mark.parametrize(("count", "size"), [(257, 256), (1024, 256), (1000, 100), (5000, 3)])
def test_a_large_pool_is_cut_to_at_most_the_size_of_distinct_candidates(
    count: int, size: int
) -> None:
    eps = pool(count)
    flt = CandidateSampleFilter(sample_size=size, rng=random.Random(1))
    step = -(-count // size)
    for _ in range(50):
        kept = sampled(flt, eps, REQUEST)
        assert len(kept) == len({id(ep) for ep in kept})
        assert {id(ep) for ep in kept} <= {id(ep) for ep in eps}
        # Every step-th from an offset below step: as many as fit, none missed.
        assert len(kept) in (count // step, -(-count // step))
        assert 0 < len(kept) <= size


def test_every_candidate_is_kept_equally_often_and_neighbours_never_together() -> None:
    """Inclusion is Bernoulli(1/step) for each endpoint: 1000 endpoints, step 10, 20,000
    draws give 2,000 each (standard deviation 42); 7 deviations either way cannot
    happen by chance for any of them, while a window or a skew towards one end of the
    list misses it by hundreds."""
    eps = pool(1000)
    flt = CandidateSampleFilter(sample_size=100, rng=random.Random(5))
    position = {id(ep): i for i, ep in enumerate(eps)}
    seen: Counter[int] = Counter()
    for _ in range(20_000):
        kept = sampled(flt, eps, REQUEST)
        positions = sorted(position[id(ep)] for ep in kept)
        assert all(b - a == 10 for a, b in pairwise(positions))
        seen.update(positions)
    assert len(seen) == 1000
    assert all(2000 - 300 <= seen[i] <= 2000 + 300 for i in range(1000)), (
        min(seen.values()),
        max(seen.values()),
    )


def test_the_pods_holding_the_prompt_are_always_kept() -> None:
    eps = pool(1024)
    prefix = PrefixCacheScorer(block_size=16)
    flt = CandidateSampleFilter(sample_size=64, hints=[prefix], rng=random.Random(2))
    req = LLMRequest("r", "m", "0123456789abcdef" * 8)
    holders = [eps[3], eps[700], eps[701]]
    for ep in holders:
        prefix.on_pick(CycleState(), req, ep)
    outsider = Endpoint("10.9.9.9:8000")  # holds the prompt, is no candidate
    prefix.on_pick(CycleState(), req, outsider)
    for _ in range(200):
        cycle = CycleState()
        kept = list(flt.filter(cycle, req, eps))
        assert kept[:3] == holders  # hinted first, then the sample
        assert outsider not in kept
        assert len(kept) <= 64
        assert len(kept) == len({id(ep) for ep in kept})
        # The match was computed once, for the scorer to reuse.
        assert prefix.matched(cycle, req) is cycle[f"{prefix.typed_name}/matched"]


def test_with_many_holders_only_the_deepest_are_hinted() -> None:
    eps = pool(1024)
    prefix = PrefixCacheScorer(block_size=16)
    shared = "0123456789abcdef" * 4
    for ep in eps[:600]:  # a system prompt every one of them was sent
        prefix.on_pick(CycleState(), LLMRequest("r", "m", shared + "x" * 16), ep)
    req = LLMRequest("r", "m", shared + "y" * 32)
    prefix.on_pick(CycleState(), req, eps[900])
    assert list(prefix.preferred(CycleState(), req, eps)) == [eps[900]]
    deep = LLMRequest("r", "m", shared + "x" * 16)
    assert len(prefix.preferred(CycleState(), deep, eps)) == 600
    # More favoured than room: a spread share of the favoured, nothing else.
    flt = CandidateSampleFilter(sample_size=100, hints=[prefix], rng=random.Random(3))
    kept = sampled(flt, eps, deep)
    assert 0 < len(kept) <= 100
    assert all(eps.index(ep) < 600 for ep in kept)


def test_the_session_tokens_pod_is_always_kept() -> None:
    eps = pool(1024)
    session = SessionAffinityScorer()
    flt = CandidateSampleFilter(sample_size=32, hints=[session], rng=random.Random(4))
    req = LLMRequest("r", "m", "", headers={session.header: encode_token(eps[513])})
    for _ in range(100):
        assert eps[513] in sampled(flt, eps, req)
    stale = LLMRequest("r", "m", "", headers={session.header: encode_token(Endpoint("1.1.1.1:1"))})
    assert len(sampled(flt, eps, stale)) == 32


def test_the_default_profile_binds_the_prefix_scorer_as_its_hint() -> None:
    scheduler = build_scheduler(default_scheduler_config())
    (flt,) = (p for p in scheduler.plugins if isinstance(p, CandidateSampleFilter))
    assert flt.sample_size == DEFAULT_SAMPLE_SIZE
    assert [type(h) for h in flt.hints] == [PrefixCacheScorer]


def test_a_prompt_returns_to_its_pod_in_a_pool_four_times_the_sample() -> None:
    eps = pool(1024)
    scheduler = build_scheduler(scheduler_sampling(256))
    prompts = [f"{n:04d}" + "shared context " * 100 for n in range(50)]
    first: dict[str, Endpoint] = {}
    for round_ in range(4):
        for prompt in prompts:
            chosen = scheduler.schedule(LLMRequest("r", "m", prompt), eps).endpoints[0]
            if round_ == 0:
                first[prompt] = chosen
            else:
                assert chosen is first[prompt]


@pytest.mark.parametrize("size", [0, 256])
def test_load_spreads_as_evenly_sampled_as_whole(size: int) -> None:
    """Unrelated prompts on 1,024 pods, 1,500 in flight: the least loaded of a sample is
    nearly always among the least loaded of all. Seen over six seeds each: every pod
    within 2 of every other, sampled or whole; a sample that left pods out for good
    (always the first 256, say) leaves them at 0 while the others hold about 6."""
    rng = random.Random(11)
    eps = pool(1024)
    # Less the no-hit LRU scorer, which sends each cold request to the pod that took one
    # longest ago even when it holds a request or two more (within 3 whole, 5 sampled,
    # over six seeds): what is judged here is the sample, not that trade.
    config = scheduler_sampling(size)
    profile = config.profiles[0]
    kept = [ref for ref in profile.plugins if ref.plugin_ref != "no-hit-lru-scorer"]
    scheduler = build_scheduler(SchedulerConfig(config.plugins, [ProfileSpec(profile.name, kept)]))
    live: list[Endpoint] = []
    for i in range(8_000):
        chosen = scheduler.schedule(LLMRequest(f"r{i}", "m", ""), eps).endpoints[0]
        chosen.request_routed()
        live.append(chosen)
        if len(live) > 1500:
            live.pop(rng.randrange(len(live))).request_finished()
    loads = [ep.inflight_requests for ep in eps]
    assert max(loads) - min(loads) <= 3, (min(loads), max(loads))


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"sampleSize": -1}, "sampleSize"),
        ({"sampleSize": "many"}, "sampleSize"),
        ({"samplesize": 10}, "samplesize"),
    ],
)
def test_bad_parameters_fail_naming_them(parameters: dict[str, object], message: str) -> None:
    with pytest.raises(SchedulerConfigError, match=message):
        factory("s", parameters)


def test_a_seed_makes_the_sample_repeat() -> None:
    eps = pool(3000)
    one = factory("s", {"sampleSize": 50, "seed": 9})
    two = factory("s", {"sampleSize": 50, "seed": 9})
    assert [sampled(one, eps, REQUEST) for _ in range(20)] == [
        sampled(two, eps, REQUEST) for _ in range(20)
    ]
