"""The prefix index: matching, LRU eviction, reverse-map consistency, endpoint removal."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.prefix_index import PrefixIndex


def endpoints(count: int) -> list[Endpoint]:
    return [Endpoint(f"10.0.0.{i + 1}:8000") for i in range(count)]


def assert_consistent(index: PrefixIndex) -> None:
    """Forward LRUs and the reverse map describe the same (endpoint, hash) pairs."""
    forward = {(ep, h) for ep in index.endpoints() for h in index.hashes_of(ep)}
    reverse = {(ep, h) for h in {h for _, h in forward} for ep in index.holders(h)}
    assert forward == reverse
    assert index.size() == len(forward)
    assert all(len(index.hashes_of(ep)) <= index.capacity_per_endpoint for ep in index.endpoints())
    # No reverse entry survives for a hash nobody holds.
    assert index._reverse.keys() == {h for _, h in forward}


@pytest.mark.parametrize(
    ("recorded", "query", "expected"),
    [
        pytest.param({0: [1, 2, 3]}, [1, 2, 3], {0: 3}, id="full-match"),
        pytest.param({0: [1, 2, 3]}, [1, 2, 9], {0: 2}, id="partial-match"),
        pytest.param({0: [1, 2, 3]}, [9, 2, 3], {}, id="first-block-differs"),
        pytest.param({0: [1, 2, 3]}, [1, 2, 3, 4, 5], {0: 3}, id="query-longer"),
        pytest.param({0: [1, 2, 3, 4]}, [1, 2], {0: 2}, id="query-shorter"),
        pytest.param(
            {0: [1, 2, 3], 1: [1, 2], 2: [1]}, [1, 2, 3], {0: 3, 1: 2, 2: 1}, id="nested-prefixes"
        ),
        pytest.param({0: [1, 2, 3], 1: [7, 8]}, [7, 8, 9], {1: 2}, id="other-endpoint-only"),
        pytest.param({0: [1, 2]}, [], {}, id="empty-query"),
        pytest.param({}, [1, 2], {}, id="empty-index"),
    ],
)
def test_match(recorded: dict[int, list[int]], query: list[int], expected: dict[int, int]) -> None:
    eps = endpoints(3)
    index = PrefixIndex(capacity_per_endpoint=100)
    for i, hashes in recorded.items():
        index.add(eps[i], hashes)
    assert index.match(query) == {eps[i]: n for i, n in expected.items()}
    assert_consistent(index)


def test_eviction_drops_least_recently_used_and_updates_reverse_map() -> None:
    a, b = endpoints(2)
    index = PrefixIndex(capacity_per_endpoint=4)
    index.add(a, [1, 2])
    index.add(b, [1, 2])
    index.add(a, [3, 4])
    index.add(a, [1, 2])  # refresh 1, 2: now 3, 4 are the oldest
    index.add(a, [5])  # evicts the least recent: 4 (inserted after 3, as the tail)
    assert set(index.hashes_of(a)) == {1, 2, 3, 5}
    assert index.holders(4) == set()
    assert index.holders(1) == {a, b}  # b's entries are untouched
    assert_consistent(index)


def test_long_prompt_over_capacity_keeps_its_leading_blocks() -> None:
    (a,) = endpoints(1)
    index = PrefixIndex(capacity_per_endpoint=3)
    index.add(a, [1, 2, 3, 4, 5])
    assert index.match([1, 2, 3, 4, 5]) == {a: 3}
    assert_consistent(index)


def test_remove_endpoint_drops_all_its_entries_only() -> None:
    a, b, c = endpoints(3)
    index = PrefixIndex(capacity_per_endpoint=10)
    index.add(a, [1, 2, 3])
    index.add(b, [1, 2])
    index.add(c, [7])
    index.remove_endpoint(b)
    index.remove_endpoint(b)  # twice is harmless
    index.remove_endpoint(Endpoint("10.9.9.9:1"))  # never seen
    assert index.match([1, 2, 3]) == {a: 3}
    assert index.size() == 4
    assert b not in index.endpoints()
    assert_consistent(index)


def test_removed_slot_is_reused_without_inheriting_entries() -> None:
    a, b, c = endpoints(3)
    index = PrefixIndex(capacity_per_endpoint=10)
    index.add(a, [1])
    index.add(b, [2])
    index.remove_endpoint(a)
    index.add(c, [3])  # takes a's slot
    assert index.match([1]) == {}
    assert index.match([3]) == {c: 1}
    assert index.match([2]) == {b: 1}
    assert_consistent(index)


def test_random_operations_keep_the_index_consistent() -> None:
    rng = random.Random(7)
    eps = endpoints(6)
    index = PrefixIndex(capacity_per_endpoint=20)
    for _ in range(2_000):
        ep = rng.choice(eps)
        if rng.random() < 0.03:
            index.remove_endpoint(ep)
        else:
            start = rng.randrange(30)
            index.add(ep, list(range(start, start + rng.randrange(1, 12))))
    assert_consistent(index)
    assert index.size() <= 20 * len(eps)


def linear_match(index: PrefixIndex, hashes: list[int]) -> dict[Endpoint, int]:
    """The definition: walk the hashes, an endpoint matched until its first miss."""
    result: dict[Endpoint, int] = {}
    active = set(index.holders(hashes[0])) if hashes else set()
    for depth, h in enumerate(hashes[1:], start=1):
        still = active & index.holders(h)
        for endpoint in active - still:
            result[endpoint] = depth
        active = still
    for endpoint in active:
        result[endpoint] = len(hashes)
    return result


def chain(blocks: list[int]) -> list[int]:
    """Chained hashes as the prefix scorer makes them: each stands for its whole prefix."""
    return [hash(tuple(blocks[: i + 1])) for i in range(len(blocks))]


def test_bisecting_match_equals_the_linear_walk_for_chained_hashes() -> None:
    """What an endpoint holds of a chain is a leading run of it, through adds, refreshes,
    evictions of every size and removals; so the bisection finds the very depths the
    walk does. Prompts share prefixes of random lengths, and the capacity is small, so
    thousands of matches cross every kind of boundary."""
    rng = random.Random(5)
    eps = endpoints(5)
    index = PrefixIndex(capacity_per_endpoint=25)
    roots = [[rng.randrange(4) for _ in range(30)] for _ in range(4)]
    compared = 0
    for _ in range(4_000):
        root = rng.choice(roots)
        blocks = root[: rng.randrange(1, 30)] + [rng.randrange(3) for _ in range(rng.randrange(4))]
        hashes = chain(blocks)
        assert index.match(hashes) == linear_match(index, hashes)
        compared += bool(index.match(hashes))
        roll = rng.random()
        if roll < 0.02:
            index.remove_endpoint(rng.choice(eps))
        else:
            index.add(rng.choice(eps), hashes)
    assert compared > 2_000  # most queries matched something: the boundaries were crossed
    assert_consistent(index)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity_per_endpoint"):
        PrefixIndex(capacity_per_endpoint=0)


def test_lru_order_matches_an_ordered_dict_reference() -> None:
    """Every path of ``add`` (new, held, repeated within one call, the very hashes last
    added again, over capacity) leaves each endpoint's LRU in the order an OrderedDict
    with move_to_end would, and ``remove_endpoint`` forgets the last-added shortcut."""
    rng = random.Random(11)
    eps = endpoints(4)
    capacity = 15
    index = PrefixIndex(capacity_per_endpoint=capacity)
    reference: dict[Endpoint, OrderedDict[int, None]] = {}
    last: dict[Endpoint, list[int]] = {}
    for _ in range(3_000):
        ep = rng.choice(eps)
        roll = rng.random()
        if roll < 0.03:
            index.remove_endpoint(ep)
            reference.pop(ep, None)
            continue
        if roll < 0.3 and ep in last:
            hashes = last[ep]  # a repeated prompt: the no-op shortcut
        else:
            hashes = [rng.randrange(40) for _ in range(rng.randrange(1, 20))]  # repeats too
        last[ep] = hashes
        index.add(ep, tuple(hashes) if roll > 0.9 else hashes)
        lru = reference.setdefault(ep, OrderedDict())
        for h in reversed(hashes):
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > capacity:
            lru.popitem(last=False)
        assert index.hashes_of(ep) == list(lru)
    for ep in eps:
        assert index.hashes_of(ep) == list(reference.get(ep, ()))
    assert_consistent(index)
