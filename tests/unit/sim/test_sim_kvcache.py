from __future__ import annotations

from epp.sim.kvcache import KvCache
from epp.sim.tokens import TokenizedPrompt, tokenize


def prompt(fill: str, tokens: int, block_size: int = 4) -> TokenizedPrompt:
    return tokenize(fill * (tokens * 4), block_size)


def test_running_request_holds_ceil_of_tokens_over_block_size() -> None:
    kv = KvCache(num_blocks=100, block_size=4)
    alloc = kv.allocate(prompt("a", 10))  # 2 full shared blocks + 1 partial
    assert kv.blocks_in_use == 3
    kv.grow(alloc, 13)
    assert kv.blocks_in_use == 4
    assert kv.usage == 0.04
    kv.release(alloc)
    assert kv.blocks_in_use == 0
    assert kv.cached_free_blocks == 2  # only full prompt blocks stay cached


def test_concurrent_requests_share_prefix_blocks() -> None:
    kv = KvCache(num_blocks=100, block_size=4)
    first = kv.allocate(prompt("a", 16))
    second = kv.allocate(prompt("a", 16))
    assert kv.blocks_in_use == 4
    assert second.hit_blocks == 3  # the last token is always recomputed
    kv.release(first)
    assert kv.blocks_in_use == 4
    kv.release(second)
    assert (kv.blocks_in_use, kv.cached_free_blocks) == (0, 4)


def test_hits_stop_at_first_uncached_block() -> None:
    kv = KvCache(num_blocks=100, block_size=4)
    kv.release(kv.allocate(prompt("a", 8)))
    longer = tokenize("a" * 32 + "b" * 32, 4)
    assert kv.hit_blocks(longer) == 2


def test_lru_evicts_least_recent_and_a_prompt_tail_before_its_head() -> None:
    kv = KvCache(num_blocks=6, block_size=4)
    a = prompt("a", 16)
    kv.release(kv.allocate(a))
    kv.release(kv.allocate(prompt("b", 8)))  # a: 4 cached, b: 2 cached; full
    c = kv.allocate(prompt("c", 8))  # needs 2 fresh blocks: evicts a's last two
    assert kv.evicted_blocks == 2
    assert kv.hit_blocks(a) == 2
    assert kv.hit_blocks(prompt("b", 9)) == 2
    kv.release(c)


def test_reused_cached_blocks_leave_the_lru() -> None:
    kv = KvCache(num_blocks=4, block_size=4)
    kv.release(kv.allocate(prompt("a", 16)))
    again = kv.allocate(prompt("a", 16))
    assert (kv.blocks_in_use, kv.cached_free_blocks, kv.evicted_blocks) == (4, 0, 0)
    kv.release(again)


def test_overcommit_is_clamped_and_empties_the_cache() -> None:
    kv = KvCache(num_blocks=4, block_size=4)
    kv.release(kv.allocate(prompt("a", 8)))
    big = kv.allocate(prompt("z", 40))
    assert kv.blocks_in_use == 10
    assert kv.usage == 1.0
    assert kv.cached_free_blocks == 0
    kv.release(big)
    assert kv.cached_free_blocks == 4


def test_blocks_needed_counts_only_blocks_not_in_use() -> None:
    kv = KvCache(num_blocks=100, block_size=4)
    p = prompt("a", 10)
    assert kv.blocks_needed(p) == 3
    held = kv.allocate(p)
    assert kv.blocks_needed(p) == 1  # shares 2, needs its own partial block
    kv.release(held)
    assert kv.blocks_needed(p) == 3  # cached-free blocks come from the free pool
