"""Which endpoints were sent which prompt prefixes: a bounded LRU of block hashes per
endpoint, plus a reverse map from hash to the endpoints holding it.

The hashes are chained (each one covers the whole prompt up to and including its block;
see :func:`epp.scheduling.scorers.prefix_cache.prompt_block_hashes`), so "endpoint E
holds the i-th hash" means "E was sent a prompt sharing the first i+1 blocks".

What an endpoint holds of a chain is always a leading run of it: every prompt that
gave ``h_i`` gave ``h_0 .. h_{i-1}`` too, so a hash is refreshed whenever a later one is,
and within one :meth:`PrefixIndex.add` the leading hashes are made the more recent; LRU
eviction therefore takes a chain's tail before its head. (A 64-bit collision could break
the run; it would cost a slightly wrong score, nothing more.) Matching relies on it: the
holders of ``h_i`` include the holders of every later hash, so the depth at which each
endpoint stops matching is found by bisection, in O(endpoints matched x log(blocks))
lookups, whatever the number of endpoints or entries. Endpoint sets are int bitmasks
(one bit per endpoint slot), so an intersection is a single ``&``.

Memory bound: at most ``capacity_per_endpoint`` entries per endpoint in the index, so
``capacity_per_endpoint * endpoints`` entries in all (``size()``); an endpoint leaves the
index with :meth:`PrefixIndex.remove_endpoint`. Measured with tracemalloc on CPython
3.11, an entry costs about 170 bytes when its hash is held by one endpoint (its LRU slot,
the reverse-map slot, the int objects), so the default 31,250 entries take about 5.3 MB
per endpoint at worst; hashes shared by several endpoints cost less per entry.

Not thread-safe: the scheduler runs on one event loop.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Sequence

from epp.datalayer.endpoint import Endpoint

__all__ = ["DEFAULT_CAPACITY_PER_ENDPOINT", "PrefixIndex"]

DEFAULT_CAPACITY_PER_ENDPOINT = 31_250  # GIE's lruCapacityPerServer


class PrefixIndex:
    """A bounded per-endpoint LRU of block hashes with a reverse map for matching.

    >>> index = PrefixIndex(capacity_per_endpoint=100)
    >>> a = Endpoint("10.0.0.1:8000")
    >>> index.add(a, [11, 22, 33])
    >>> index.match([11, 22, 99]) == {a: 2}
    True
    """

    __slots__ = (
        "_capacity",
        "_endpoint_at",
        "_free_slots",
        "_lrus",
        "_reverse",
        "_size",
        "_slot_of",
    )

    def __init__(self, capacity_per_endpoint: int = DEFAULT_CAPACITY_PER_ENDPOINT) -> None:
        if capacity_per_endpoint < 1:
            raise ValueError(f"capacity_per_endpoint must be >= 1, got {capacity_per_endpoint}")
        self._capacity = capacity_per_endpoint
        # hash -> bitmask of the slots (endpoints) holding it; never 0 (the key goes instead).
        self._reverse: dict[int, int] = {}
        self._slot_of: dict[Endpoint, int] = {}
        self._endpoint_at: list[Endpoint | None] = []
        self._lrus: list[OrderedDict[int, None] | None] = []  # by slot; oldest first
        # Freed slots, reused lowest first so the masks stay small ints.
        self._free_slots: list[int] = []
        self._size = 0

    @property
    def capacity_per_endpoint(self) -> int:
        return self._capacity

    def size(self) -> int:
        """Entries (endpoint, hash) held in all, for a gauge."""
        return self._size

    def endpoints(self) -> list[Endpoint]:
        return list(self._slot_of)

    def hashes_of(self, endpoint: Endpoint) -> list[int]:
        """The hashes held for ``endpoint``, least recently used first."""
        slot = self._slot_of.get(endpoint)
        if slot is None:
            return []
        lru = self._lrus[slot]
        assert lru is not None
        return list(lru)

    def holders(self, block_hash: int) -> set[Endpoint]:
        """The endpoints holding ``block_hash`` (from the reverse map)."""
        mask = self._reverse.get(block_hash, 0)
        return set(self._endpoints_in(mask))

    def add(self, endpoint: Endpoint, hashes: Sequence[int]) -> None:
        """Record that ``endpoint`` was sent a prompt with these chained block hashes.

        The hashes become the endpoint's most recently used, the leading ones most recent
        of all (they are inserted last to first), so when a prompt is longer than the
        capacity its tail is what gets evicted. Evicted hashes leave the reverse map too.
        """
        if not hashes:
            return
        slot = self._slot_of.get(endpoint)
        if slot is None:
            slot = self._allocate(endpoint)
        lru = self._lrus[slot]
        assert lru is not None
        bit = 1 << slot
        reverse = self._reverse
        added = 0
        for h in reversed(hashes):
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                reverse[h] = reverse.get(h, 0) | bit
                added += 1
        self._size += added
        excess = len(lru) - self._capacity
        if excess > 0:
            keep = ~bit
            for _ in range(excess):
                h, _unused = lru.popitem(last=False)
                mask = reverse[h] & keep
                if mask:
                    reverse[h] = mask
                else:
                    del reverse[h]
            self._size -= excess

    def match(self, hashes: Sequence[int]) -> dict[Endpoint, int]:
        """How many leading hashes each endpoint holds; endpoints with none are absent.

        Read-only: matching does not refresh recency (recording a pick does).

        Found by bisection, in O(endpoints matched x log(hashes)) lookups rather than one
        per hash, because what an endpoint holds of a chain is always a leading run of it
        (see the module docstring): the holders of ``hashes[i]`` include those of
        every later hash, so wherever two positions have the same holders, every position
        between them has them too.
        """
        count = len(hashes)
        if not count:
            return {}
        get = self._reverse.get
        first = get(hashes[0], 0)
        if not first:
            return {}  # a miss, the common case for a new prompt: one lookup
        result: dict[Endpoint, int] = {}
        last = get(hashes[-1], 0) & first if count > 1 else first
        if last:
            self._set_depth(result, last, count)
        # Segments [lo, hi] whose end holders differ; each change is found in log steps.
        pending = [(0, first, count - 1, last)] if first != last else []
        while pending:
            lo, lo_mask, hi, hi_mask = pending.pop()
            if hi - lo == 1:  # the endpoints lost between lo and hi hold lo + 1 hashes
                self._set_depth(result, lo_mask & ~hi_mask, lo + 1)
                continue
            mid = (lo + hi) // 2
            mid_mask = get(hashes[mid], 0) & lo_mask
            if mid_mask != lo_mask:
                pending.append((lo, lo_mask, mid, mid_mask))
            if mid_mask != hi_mask:
                pending.append((mid, mid_mask, hi, hi_mask))
        return result

    def _set_depth(self, result: dict[Endpoint, int], mask: int, depth: int) -> None:
        endpoint_at = self._endpoint_at
        while mask:
            low = mask & -mask
            endpoint = endpoint_at[low.bit_length() - 1]
            assert endpoint is not None
            result[endpoint] = depth
            mask ^= low

    def remove_endpoint(self, endpoint: Endpoint) -> None:
        """Drop every entry of ``endpoint``; a no-op for an endpoint the index never saw."""
        slot = self._slot_of.pop(endpoint, None)
        if slot is None:
            return
        lru = self._lrus[slot]
        assert lru is not None
        keep = ~(1 << slot)
        reverse = self._reverse
        for h in lru:
            mask = reverse[h] & keep
            if mask:
                reverse[h] = mask
            else:
                del reverse[h]
        self._size -= len(lru)
        self._lrus[slot] = None
        self._endpoint_at[slot] = None
        heapq.heappush(self._free_slots, slot)

    def clear(self) -> None:
        for endpoint in list(self._slot_of):
            self.remove_endpoint(endpoint)

    def _allocate(self, endpoint: Endpoint) -> int:
        if self._free_slots:
            slot = heapq.heappop(self._free_slots)
            self._endpoint_at[slot] = endpoint
            self._lrus[slot] = OrderedDict()
        else:
            slot = len(self._endpoint_at)
            self._endpoint_at.append(endpoint)
            self._lrus.append(OrderedDict())
        self._slot_of[endpoint] = slot
        return slot

    def _endpoints_in(self, mask: int) -> list[Endpoint]:
        out: list[Endpoint] = []
        while mask:
            low = mask & -mask
            endpoint = self._endpoint_at[low.bit_length() - 1]
            assert endpoint is not None
            out.append(endpoint)
            mask ^= low
        return out
