from __future__ import annotations

import itertools
import random
import statistics

import pytest

from benchmarks.workloads import WORKLOADS, multi_turn, no_sharing, shared_prefix, zipf
from benchmarks.workloads.arrivals import poisson_arrivals, rate_sweep
from benchmarks.workloads.request import Request
from benchmarks.workloads.text import count_tokens, pseudo_text

SMALL = shared_prefix.SharedPrefixSpec(
    groups=4, users_per_group=3, system_tokens=300, question_tokens=50, output_tokens=7
)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_workload_is_deterministic_given_its_seed(name: str) -> None:
    first = WORKLOADS[name](4.0, 10.0, 7, "m")
    assert first == WORKLOADS[name](4.0, 10.0, 7, "m")
    assert first != WORKLOADS[name](4.0, 10.0, 8, "m")


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_workload_builds_streaming_chat_bodies_sorted_by_arrival(name: str) -> None:
    requests = WORKLOADS[name](4.0, 10.0, 0, "my-model")
    assert requests
    assert [r.arrival_s for r in requests] == sorted(r.arrival_s for r in requests)
    for r in requests:
        assert r.arrival_s >= 0
        assert r.body["model"] == "my-model"
        assert r.body["stream"] is True
        assert r.body["stream_options"] == {"include_usage": True}
        assert r.body["max_tokens"] == r.output_tokens
        assert count_tokens(r.prompt_text) == r.prompt_tokens


@pytest.mark.parametrize("tokens", [0, 1, 5, 16, 1200, 6000])
def test_pseudo_text_has_exactly_the_tokens_asked_for(tokens: int) -> None:
    text = pseudo_text("seed", tokens)
    assert len(text.encode()) == 4 * tokens
    assert text.isascii() and "  " not in text
    assert count_tokens(text) == tokens


def test_pseudo_text_differs_from_the_first_block_between_seeds() -> None:
    assert pseudo_text("a", 100)[:64] != pseudo_text("b", 100)[:64]
    assert pseudo_text("a", 100) == pseudo_text("a", 100)


def test_shared_prefix_requests_share_their_groups_system_prompt() -> None:
    requests = shared_prefix.generate(SMALL, rate_per_s=20.0, duration_s=10.0, seed=1)
    systems: dict[int, str] = {}
    for r in requests:
        system, question = r.body["messages"]
        assert (system["role"], question["role"]) == ("system", "user")
        assert count_tokens(system["content"]) == 300
        assert count_tokens(question["content"]) == 50
        assert systems.setdefault(r.group, system["content"]) == system["content"]
        assert 0 <= r.group < 4 and r.session // 3 == r.group
        assert r.prompt_tokens == 350 and r.output_tokens == 7
    assert len(set(systems.values())) == len(systems) == 4


def test_zipf_weights_are_normalised_and_decreasing() -> None:
    weights = zipf.zipf_weights(32, 1.1)
    assert sum(weights) == pytest.approx(1.0)
    assert weights == sorted(weights, reverse=True)
    assert zipf.zipf_weights(3, 0.0) == pytest.approx([1 / 3] * 3)


def test_zipf_workload_favours_the_first_groups() -> None:
    requests = zipf.generate(SMALL, rate_per_s=50.0, duration_s=20.0, exponent=2.0)
    counts = [sum(r.group == g for r in requests) for g in range(4)]
    assert counts[0] > counts[1] > counts[3]


def test_multi_turn_prompts_extend_the_previous_turn() -> None:
    spec = multi_turn.MultiTurnSpec(
        turns=4, system_tokens=100, user_tokens=20, output_tokens=10, think_s=1.0
    )
    requests = multi_turn.generate(spec, rate_per_s=8.0, duration_s=30.0, seed=3)
    by_conv: dict[int, list[Request]] = {}
    for r in requests:
        by_conv.setdefault(r.session, []).append(r)
    complete = 0
    for turns in by_conv.values():
        turns.sort(key=lambda r: r.turn)
        # The window may cut a conversation's start or end, never its middle.
        assert [r.turn for r in turns] == list(range(turns[0].turn, turns[0].turn + len(turns)))
        complete += len(turns) == 4
        for earlier, later in itertools.pairwise(turns):
            assert later.arrival_s >= earlier.arrival_s
            assert later.prompt_text.startswith(earlier.prompt_text)
            assert (
                later.body["messages"][: len(earlier.body["messages"])] == earlier.body["messages"]
            )
            assert later.body["messages"][-2]["role"] == "assistant"
            assert later.prompt_tokens == earlier.prompt_tokens + 10 + 20
    assert complete > len(by_conv) / 2


def test_no_sharing_prompts_share_no_first_block() -> None:
    requests = no_sharing.generate(
        rate_per_s=20.0, duration_s=5.0, prompt_tokens=64, output_tokens=3
    )
    firsts = {r.prompt_text[:64] for r in requests}
    assert len(firsts) == len(requests)
    assert all(r.group == -1 and r.prompt_tokens == 64 for r in requests)


@pytest.mark.parametrize("rate", [2.0, 25.0])
def test_poisson_arrivals_have_the_asked_mean_rate(rate: float) -> None:
    duration = 2000.0
    times = poisson_arrivals(rate, duration, random.Random(11))
    assert all(0 <= t < duration for t in times)
    # Count ~ Poisson(rate * duration): within 5 standard deviations.
    expected = rate * duration
    assert abs(len(times) - expected) < 5 * expected**0.5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.05)


def test_multi_turn_request_rate_is_the_offered_rate_from_the_start() -> None:
    spec = multi_turn.MultiTurnSpec(
        turns=5, system_tokens=4, user_tokens=4, output_tokens=1, think_s=5.0
    )
    requests = multi_turn.generate(spec, rate_per_s=10.0, duration_s=400.0)
    assert all(0 <= r.arrival_s < 400.0 for r in requests)
    first = sum(r.arrival_s < 100.0 for r in requests)
    assert len(requests) == pytest.approx(10.0 * 400.0, rel=0.1)
    assert first == pytest.approx(10.0 * 100.0, rel=0.15)  # no ramp-up


def test_rate_sweep_scales_the_knee() -> None:
    assert rate_sweep(20.0, [2.0, 0.5, 1.0]) == [10.0, 20.0, 40.0]
    with pytest.raises(ValueError):
        rate_sweep(0.0, [1.0])


def test_multi_turn_think_time_has_its_minimum_and_mean() -> None:
    spec = multi_turn.MultiTurnSpec(
        turns=2, system_tokens=4, user_tokens=4, output_tokens=1, think_s=3.0, min_think_s=2.0
    )
    rng = random.Random(5)
    gaps = [spec.gap_s(rng) for _ in range(20000)]
    assert min(gaps) >= 2.0
    assert statistics.fmean(gaps) == pytest.approx(3.0, rel=0.05)
    with pytest.raises(ValueError):
        multi_turn.MultiTurnSpec(
            turns=2, system_tokens=4, user_tokens=4, output_tokens=1, think_s=1.0, min_think_s=2.0
        )
