"""prefix-cache-scorer: block hashing, scoring, recording picks, endpoint removal."""

from __future__ import annotations

import pytest
import xxhash

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.scorers.prefix_cache import PrefixCacheScorer, factory, prompt_block_hashes
from epp.scheduling.types import CycleState, LLMRequest

BLOCK = "0123456789abcdef"  # 16 bytes


def scorer(block_size: int = 16, max_blocks: int = 256, capacity: int = 1000) -> PrefixCacheScorer:
    return PrefixCacheScorer(
        block_size=block_size, max_prefix_blocks=max_blocks, lru_capacity_per_server=capacity
    )


def request(prompt: str, model: str = "m") -> LLMRequest:
    return LLMRequest("r", model, prompt)


def endpoints(count: int) -> list[Endpoint]:
    return [Endpoint(f"10.0.0.{i + 1}:8000") for i in range(count)]


def record(s: PrefixCacheScorer, req: LLMRequest, chosen: Endpoint) -> None:
    s.on_pick(CycleState(), req, chosen)


@pytest.mark.parametrize(
    ("prompt", "block_size", "max_blocks", "count"),
    [
        pytest.param("", 16, 256, 0, id="empty"),
        pytest.param("x" * 15, 16, 256, 0, id="partial-block-only"),
        pytest.param("x" * 16, 16, 256, 1, id="one-exact-block"),
        pytest.param("x" * 47, 16, 256, 2, id="trailing-partial-dropped"),
        pytest.param("x" * 1000, 16, 5, 5, id="capped-at-max-blocks"),
        pytest.param("é" * 8, 16, 256, 1, id="utf8-bytes-not-chars"),
        pytest.param("\ud800" * 6, 16, 256, 1, id="lone-surrogate"),
    ],
)
def test_block_count(prompt: str, block_size: int, max_blocks: int, count: int) -> None:
    assert len(prompt_block_hashes("m", prompt, block_size, max_blocks)) == count


def test_hashes_follow_the_documented_chain() -> None:
    data = (BLOCK * 2).encode()
    seed = xxhash.xxh64_intdigest(b"model-a")
    h0 = xxhash.xxh64_intdigest(data[:16], seed=seed)
    h1 = xxhash.xxh64_intdigest(data[16:], seed=h0)
    assert prompt_block_hashes("model-a", BLOCK * 2, 16, 256) == [h0, h1]


def test_same_block_at_another_position_hashes_differently() -> None:
    first = prompt_block_hashes("m", "A" * 16 + BLOCK, 16, 256)
    second = prompt_block_hashes("m", "B" * 16 + BLOCK, 16, 256)
    assert first[1] != second[1]


@pytest.mark.parametrize(
    ("recorded", "asked", "expected"),
    [
        pytest.param(BLOCK * 4, BLOCK * 4, [1.0, 0.0, 0.0], id="same-prompt"),
        pytest.param(BLOCK * 4, BLOCK * 2 + "z" * 32, [0.5, 0.0, 0.0], id="half-shared"),
        pytest.param(BLOCK * 2, BLOCK * 4, [0.5, 0.0, 0.0], id="recorded-shorter"),
        pytest.param(BLOCK * 4, BLOCK * 4 + "tail<16", [1.0, 0.0, 0.0], id="partial-tail-ignored"),
        pytest.param(BLOCK * 4, "z" + BLOCK * 4, [0.0, 0.0, 0.0], id="first-block-differs"),
        pytest.param(BLOCK * 4, "short", [0.0, 0.0, 0.0], id="no-full-block"),
    ],
)
def test_score(recorded: str, asked: str, expected: list[float]) -> None:
    s = scorer()
    eps = endpoints(3)
    record(s, request(recorded), eps[0])
    assert s.score(CycleState(), request(asked), eps) == pytest.approx(expected)


def test_models_do_not_share_prefixes() -> None:
    s = scorer()
    eps = endpoints(2)
    record(s, request(BLOCK * 4, model="model-a"), eps[0])
    assert s.score(CycleState(), request(BLOCK * 4, model="model-b"), eps) == [0.0, 0.0]
    assert s.score(CycleState(), request(BLOCK * 4, model="model-a"), eps) == [1.0, 0.0]


def test_single_endpoint_and_unrecorded_endpoints() -> None:
    s = scorer()
    (a,) = endpoints(1)
    assert s.score(CycleState(), request(BLOCK * 2), [a]) == [0.0]
    record(s, request(BLOCK * 2), a)
    assert s.score(CycleState(), request(BLOCK * 2), [a]) == [1.0]


def test_hashes_are_computed_once_per_cycle_and_reused_by_on_pick() -> None:
    s = scorer()
    a, b = endpoints(2)
    record(s, request(BLOCK * 2), b)  # b holds the first block: the prompt is hashed whole
    cycle = CycleState()
    s.score(cycle, request(BLOCK * 3), [a, b])
    (stored,) = (value for key, value in cycle.items() if key.endswith("/block-hashes"))
    assert stored == prompt_block_hashes("m", BLOCK * 3, 16, 256)
    # on_pick takes the hashes from the cycle, not from the request it is handed.
    s.on_pick(cycle, request("ignored"), a)
    assert s.index.hashes_of(a) == list(reversed(stored))


def test_a_prompt_whose_first_block_nobody_holds_is_hashed_only_when_recorded() -> None:
    s = scorer()
    a, b = endpoints(2)
    record(s, request("x" * 16 * 3), b)  # another prompt: its blocks are no help
    cycle = CycleState()
    assert s.score(cycle, request(BLOCK * 3), [a, b]) == [0.0, 0.0]
    assert not [key for key in cycle if key.endswith("/block-hashes")]  # told by one block
    s.on_pick(cycle, request(BLOCK * 3), a)
    assert s.index.hashes_of(a) == list(reversed(prompt_block_hashes("m", BLOCK * 3, 16, 256)))
    assert (s.hit_ratios.count, s.hit_ratios.sum, s.hit_bytes.sum) == (1, 0.0, 0)
    assert s.score(CycleState(), request(BLOCK * 3), [a, b]) == [1.0, 0.0]


def test_on_pick_without_a_scoring_pass_hashes_itself() -> None:
    s = scorer()
    a, b = endpoints(2)
    record(s, request(BLOCK * 2), b)
    assert s.score(CycleState(), request(BLOCK * 2), [a, b]) == [0.0, 1.0]


def test_prompt_without_full_block_records_nothing() -> None:
    s = scorer()
    (a,) = endpoints(1)
    record(s, request("tiny"), a)
    assert s.index.size() == 0


def test_endpoints_removed_are_forgotten() -> None:
    s = scorer()
    a, b = endpoints(2)
    record(s, request(BLOCK * 2), a)
    record(s, request(BLOCK * 2), b)
    s.on_endpoints_removed([a])
    assert s.score(CycleState(), request(BLOCK * 2), [a, b]) == [0.0, 1.0]
    assert s.index.size() == 2


def test_factory_reads_gie_parameter_names() -> None:
    s = factory("prefix", {"blockSize": 4, "maxPrefixBlocksToMatch": 2, "lruCapacityPerServer": 3})
    (a,) = endpoints(1)
    record(s, request("abcdefghijkl"), a)  # 3 blocks of 4, capped at 2
    assert s.index.size() == 2
    assert s.index.capacity_per_endpoint == 3
    assert str(s.typed_name) == "prefix-cache-scorer/prefix"


def test_pick_after_scoring_counts_the_hit_ratio_and_bytes() -> None:
    s = scorer()
    a, b = endpoints(2)
    record(s, request(BLOCK * 2), a)  # a holds 2 of the 4 blocks asked next
    assert (s.hit_ratios.count, s.hit_bytes.count) == (0, 0)
    cycle = CycleState()
    s.score(cycle, request(BLOCK * 4), [a, b])
    s.on_pick(cycle, request(BLOCK * 4), a)
    assert (s.hit_ratios.count, s.hit_ratios.sum) == (1, 0.5)
    assert (s.hit_bytes.count, s.hit_bytes.sum) == (1, 2 * 16)
    assert s.hit_ratios.counts[s.hit_ratios.bounds.index(0.5)] == 1  # the bucket le="0.5"
    record(s, request(BLOCK * 4), b)  # on_pick with no scoring pass: nothing counted
    assert (s.hit_ratios.count, s.hit_bytes.count) == (1, 1)
    assert s.index_entries() == 8  # a and b each hold the 4 blocks now
