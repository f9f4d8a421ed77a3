from __future__ import annotations

from vllm_sim.kvcache import KvCache
from vllm_sim.tokens import tokenize


def hashes(fill: str, blocks: int, block_size: int = 4) -> tuple[int, ...]:
    return tokenize(fill * (blocks * block_size * 4), block_size).block_hashes


def compute(kv: KvCache, blocks: tuple[int, ...], extra_private: int = 0) -> list[int]:
    """Allocate and compute a prompt's blocks the way the engine does; return them shared."""
    kv.allocate(len(blocks) + extra_private)
    for h in blocks:
        kv.promote(h)
    return list(blocks)


def test_private_blocks_become_shared_once_computed() -> None:
    kv = KvCache(num_blocks=100, block_size=4)
    shared = compute(kv, hashes("a", 2), extra_private=1)
    assert kv.blocks_in_use == 3
    assert kv.usage == 0.03
    kv.release(shared, 1)
    assert kv.blocks_in_use == 0
    assert kv.cached_free_blocks == 2  # only full prompt blocks stay cached


def test_a_second_holder_shares_blocks_and_a_duplicate_is_dropped() -> None:
    kv = KvCache(num_blocks=100, block_size=4)
    blocks = hashes("a", 4)
    first = compute(kv, blocks)
    assert kv.match_prefix(blocks, 3) == (3, 0)  # cached and held: none comes from free
    kv.acquire(blocks[:3])
    # The second computes its 4th block itself, concurrently: the copy is dropped.
    second = [*blocks[:3], *compute(kv, blocks[3:])]
    assert kv.blocks_in_use == 4
    kv.release(first, 0)
    assert kv.blocks_in_use == 4
    kv.release(second, 0)
    assert (kv.blocks_in_use, kv.cached_free_blocks) == (0, 4)


def test_match_stops_at_the_first_uncached_block_and_counts_free_ones() -> None:
    kv = KvCache(num_blocks=100, block_size=4)
    kv.release(compute(kv, hashes("a", 2)), 0)
    longer = tokenize("a" * 32 + "b" * 32, 4).block_hashes
    assert kv.match_prefix(longer, 10) == (2, 2)
    assert kv.match_prefix(longer, 1) == (1, 1)
    kv.acquire(longer[:2])
    assert (kv.blocks_in_use, kv.cached_free_blocks) == (2, 0)


def test_lru_evicts_least_recent_and_a_prompt_tail_before_its_head() -> None:
    kv = KvCache(num_blocks=6, block_size=4)
    a = hashes("a", 4)
    kv.release(compute(kv, a), 0)
    kv.release(compute(kv, hashes("b", 2)), 0)  # a: 4 cached, b: 2 cached; full
    c = compute(kv, hashes("c", 2))  # needs 2 fresh blocks: evicts a's last two
    assert kv.evicted_blocks == 2
    assert kv.match_prefix(a, 4) == (2, 2)
    assert kv.match_prefix(hashes("b", 2), 2) == (2, 2)
    kv.release(c, 0)


def test_free_blocks_count_evictable_cached_blocks() -> None:
    kv = KvCache(num_blocks=4, block_size=4)
    kv.release(compute(kv, hashes("a", 4)), 0)
    assert (kv.free_blocks(), kv.cached_free_blocks) == (4, 4)
    kv.allocate(1)
    assert (kv.free_blocks(), kv.cached_free_blocks, kv.evicted_blocks) == (3, 3, 1)


def test_overcommit_is_clamped_and_empties_the_cache() -> None:
    kv = KvCache(num_blocks=4, block_size=4)
    kv.release(compute(kv, hashes("a", 2)), 0)
    kv.allocate(10)
    assert kv.usage == 1.0
    assert (kv.free_blocks(), kv.cached_free_blocks) == (0, 0)
    kv.release([], 10)
    assert kv.blocks_in_use == 0
