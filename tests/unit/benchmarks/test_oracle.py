from __future__ import annotations

from benchmarks.routing.oracle import oracle_hit_rate
from benchmarks.workloads import no_sharing, shared_prefix
from benchmarks.workloads.request import Request, chat_body
from benchmarks.workloads.text import pseudo_text


def _request(t: float, *contents: str) -> Request:
    messages = [{"role": "user", "content": c} for c in contents]
    return Request(
        arrival_s=t,
        body=chat_body("m", messages, 1),
        group=0,
        session=0,
        turn=0,
        prompt_tokens=sum(len(c) for c in contents) // 4,
        output_tokens=1,
    )


def test_a_repeated_prefix_hits_its_full_blocks_only_after_its_first_request() -> None:
    prefix = pseudo_text("p", 64)  # 4 blocks of 16 tokens
    first = _request(0.0, prefix, pseudo_text("q1", 10))
    second = _request(1.0, prefix, pseudo_text("q2", 10))
    result = oracle_hit_rate([second, first])  # replayed in arrival order
    assert result.query_tokens == 2 * 74
    assert result.hit_tokens == 64
    assert result.hit_rate == 64 / 148


def test_matching_stops_at_the_first_new_block() -> None:
    a, b = pseudo_text("a", 16), pseudo_text("b", 16)
    result = oracle_hit_rate([_request(0, a, b, a), _request(1, b, a)])
    assert result.hit_tokens == 0  # b at the start was never a leading block


def test_no_sharing_has_no_hits_and_shared_prefix_approaches_its_share() -> None:
    assert (
        oracle_hit_rate(
            no_sharing.generate(rate_per_s=5, duration_s=5, prompt_tokens=100, output_tokens=1)
        ).hit_rate
        == 0
    )
    spec = shared_prefix.SharedPrefixSpec(
        groups=2, users_per_group=2, system_tokens=800, question_tokens=160, output_tokens=1
    )
    rate = oracle_hit_rate(shared_prefix.generate(spec, rate_per_s=50, duration_s=20)).hit_rate
    assert 800 / 960 <= rate < 1.0


def test_empty_workload() -> None:
    assert oracle_hit_rate([]).hit_rate == 0.0
