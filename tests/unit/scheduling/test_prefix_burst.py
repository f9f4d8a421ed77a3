"""A burst of one prefix: prefix affinity versus load, under two profiles.

Most tests here pin the reference-style profile (prefix 3, queue 2, KV cache 2, in-flight
2, every load score min-max), which is what they explain; the last ones check epp's
default (prefix 3, in-flight 4 with gap scale 128, queue 1).

What the reference-style weights trade off:

* The prefix scorer pays ``3 x matched fraction`` to the endpoint that was sent the
  prefix; the pick is recorded at routing time, so from the second request of a burst the
  holder leads by 3 x 1.0 on a full match.
* The load scorers are min-max normalized over the candidates, so they are scale-free:
  the most loaded endpoint scores 0 whether it leads by one request or by a hundred.
  Each load scorer can therefore take at most its weight (2) from the holder.
* In-flight counts move with every pick, but 2 < 3: on their own they never pull a full
  match off its holder, however high its in-flight count climbs. The burst spreads when
  the scrape catches up (queue 2 + in-flight 2 = 4 > 3), that is within one scrape
  interval (the reference polls every 50 ms), and it then moves in scrape-sized chunks.
* A partial match weighs less: with half the prompt shared, 3 x 0.5 = 1.5 < 2, and
  in-flight load alone spreads the burst from the second request.
* Raising the in-flight weight above the prefix weight (4 > 3) spreads a full-match
  burst at once, at the price of giving up affinity whenever the holder has even one
  request more in flight than the least loaded endpoint (the scale-free normalization
  cannot say "a little busier"). Keeping affinity up to a load gap of k requests would
  need a gap-aware load score, e.g. ``1 - min(n - min_n, k) / k``, with a weight above
  the prefix weight.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

import pytest

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.scheduling.scheduler import (
    PluginSpec,
    ProfilePluginRef,
    ProfileSpec,
    Scheduler,
    SchedulerConfig,
    build_scheduler,
    default_scheduler_config,
)
from epp.scheduling.types import LLMRequest

SHARED = "You are a helpful assistant. Answer briefly and cite sources. " * 16  # ~1 KB


def reference_style_config() -> SchedulerConfig:
    """The reference EPP's weights plus a min-max in-flight scorer (epp's first default)."""
    weights = [
        ("prefer-fresh-filter", None),
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
        ("inflight-load-scorer", 2.0),
        ("max-score-picker", None),
    ]
    return SchedulerConfig(
        [PluginSpec(name) for name, _ in weights],
        [ProfileSpec("default", [ProfilePluginRef(name, w) for name, w in weights])],
    )


def scheduler_with(
    weights: dict[str, float], seed: int = 11, base: SchedulerConfig | None = None
) -> Scheduler:
    base = base or reference_style_config()
    (profile,) = base.profiles
    refs = [
        ProfilePluginRef(r.plugin_ref, weights.get(r.plugin_ref, r.weight)) for r in profile.plugins
    ]
    # A seeded picker so that tie-breaks are repeatable.
    plugins = [
        PluginSpec(p.type, p.name, {"seed": seed}) if p.type == "max-score-picker" else p
        for p in base.plugins
    ]
    return build_scheduler(SchedulerConfig(plugins, [replace(profile, plugins=refs)]))


def burst(scheduler: Scheduler, prompts: list[str], *, scrape_every: int | None) -> list[str]:
    """Route ``prompts`` back to back; nothing finishes. Each pick raises the chosen
    endpoint's in-flight count (as the request-control layer does); every
    ``scrape_every`` picks a scrape shows each endpoint's requests as waiting."""
    now = time.monotonic()
    eps = [
        Endpoint(f"10.0.0.{i}:8000", metrics=Metrics(kv_cache_usage=0.2, updated_at=now))
        for i in range(3)
    ]
    primaries = []
    for n, prompt in enumerate(prompts, start=1):
        chosen = scheduler.schedule(LLMRequest(f"r{n}", "m", prompt), eps).primary
        chosen.request_routed()
        primaries.append(chosen.address)
        if scrape_every and n % scrape_every == 0:
            for ep in eps:
                ep.metrics = replace(ep.metrics, waiting_requests=ep.inflight_requests)
    return primaries


def test_inflight_alone_does_not_pull_a_full_match_off_its_holder() -> None:
    primaries = burst(scheduler_with({}), [SHARED] * 12, scrape_every=None)
    assert len(set(primaries)) == 1


def test_burst_spreads_once_the_scrape_shows_the_load() -> None:
    primaries = burst(scheduler_with({}), [SHARED] * 12, scrape_every=4)
    # Before the first scrape everything sticks to the holder; then it moves in chunks.
    assert len(set(primaries[:4])) == 1
    assert primaries[4] != primaries[0]
    assert sorted(Counter(primaries).values()) == [4, 4, 4]


def test_partial_match_spreads_on_inflight_load() -> None:
    half = SHARED[: len(SHARED) // 2 // 64 * 64]  # whole blocks
    prompts = [half + f"question {i:04d} " * (len(half) // 15) for i in range(6)]
    primaries = burst(scheduler_with({}), prompts, scrape_every=None)
    assert primaries[1] != primaries[0]
    assert len(set(primaries)) == 3


def test_inflight_weight_above_prefix_weight_spreads_at_once() -> None:
    primaries = burst(
        scheduler_with({"inflight-load-scorer": 4.0}), [SHARED] * 6, scrape_every=None
    )
    assert len(set(primaries[:3])) == 3
    assert sorted(Counter(primaries).values()) == [2, 2, 2]


@pytest.mark.parametrize("seed", range(5))
def test_cold_start_burst_of_distinct_prompts_spreads(seed: int) -> None:
    """No shared prefix: in-flight load alone round-robins a burst."""
    prompts = [f"{i:04d}" + SHARED for i in range(9)]
    primaries = burst(scheduler_with({}, seed=seed), prompts, scrape_every=None)
    assert sorted(Counter(primaries).values()) == [3, 3, 3]


def test_default_profile_keeps_a_full_match_until_the_holder_is_far_busier() -> None:
    scheduler = scheduler_with({}, base=default_scheduler_config())
    # Nothing finishes and no scrape comes: only the in-flight gap grows. A full match is
    # worth 3 and a request of gap costs 4/128, so the holder keeps the burst until it
    # has 96 more in flight than the others; then a second pod takes the prefix on (and
    # keeps it, as it now holds it too) rather than the burst scattering.
    primaries = burst(scheduler, [SHARED] * 150, scrape_every=None)
    assert len(set(primaries[:96])) == 1
    assert primaries[96] != primaries[0]
    assert len(set(primaries)) == 2


@pytest.mark.parametrize("seed", range(3))
def test_default_profile_spreads_distinct_prompts(seed: int) -> None:
    prompts = [f"{i:04d}" + SHARED for i in range(9)]
    primaries = burst(
        scheduler_with({}, seed=seed, base=default_scheduler_config()), prompts, scrape_every=None
    )
    assert sorted(Counter(primaries).values()) == [3, 3, 3]
