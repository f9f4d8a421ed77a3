"""A paged KV-cache block pool with vLLM-style automatic prefix caching.

Blocks are counted, not stored. A running request holds *shared* blocks (full prompt blocks,
keyed by their chained hash and reference-counted, so requests with one prefix hold them
once) and *private* blocks (the block being filled and generated tokens). A private block
becomes shared (``promote``) once the prompt tokens it holds have been computed, so a later
request can reuse it while its first owner still runs, as in vLLM.

When the last holder of a shared block lets go, the block stays cached but free: it joins
an LRU and is reused by a request with the same prefix, or evicted (least recently used
first) when a new block is needed and no empty one is left. A request's blocks enter the
LRU tail first, so its prefix outlives its suffix (vLLM's free-block queue does the same).

``usage`` counts only blocks held by running requests, like vLLM's ``kv_cache_usage_perc``.
Capacity is enforced by the caller (``free_blocks``), except that the engine lets a request
that runs alone exceed it, so an oversized prompt cannot deadlock; ``usage`` is then
clamped to 1.0 and the LRU is empty. Every operation costs O(blocks it touches).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["KvCache"]


class KvCache:
    """Block accounting for one pod. Not thread-safe; nothing here awaits."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Shared blocks held by at least one running request: hash -> holders.
        self._refs: dict[int, int] = {}
        # Free but still cached blocks; the first entry is evicted first.
        self._lru: OrderedDict[int, None] = OrderedDict()
        self._private = 0
        self.evicted_blocks = 0

    @property
    def blocks_in_use(self) -> int:
        """Blocks held by running requests (shared blocks counted once)."""
        return len(self._refs) + self._private

    @property
    def cached_free_blocks(self) -> int:
        """Blocks that hold a finished request's prefix and can be reused or evicted."""
        return len(self._lru)

    @property
    def usage(self) -> float:
        """Fraction of the cache held by running requests, in [0, 1]."""
        return min(1.0, self.blocks_in_use / self.num_blocks)

    def free_blocks(self) -> int:
        """Blocks a request may take: empty ones plus evictable cached ones."""
        return max(0, self.num_blocks - self.blocks_in_use)

    def is_cached(self, block_hash: int) -> bool:
        """Whether a block with this hash is present, in use or free."""
        return block_hash in self._refs or block_hash in self._lru

    def match_prefix(self, hashes: Sequence[int], limit: int) -> tuple[int, int]:
        """Leading blocks of ``hashes[:limit]`` that are cached, and how many of them are free.

        The free ones leave the free pool when ``acquire`` takes them.
        """
        hits = free = 0
        refs, lru = self._refs, self._lru
        for h in hashes[:limit]:
            if h in refs:
                pass
            elif h in lru:
                free += 1
            else:
                break
            hits += 1
        return hits, free

    def acquire(self, hashes: Sequence[int]) -> None:
        """Hold the cached blocks ``hashes`` (all present: see ``match_prefix``)."""
        refs = self._refs
        for h in hashes:
            count = refs.get(h)
            if count is None:
                del self._lru[h]
                refs[h] = 1
            else:
                refs[h] = count + 1

    def allocate(self, n: int) -> None:
        """Take ``n`` private blocks, evicting free cached blocks as needed."""
        self._private += n
        self._evict_to_fit()

    def promote(self, block_hash: int) -> None:
        """Turn one computed private block into the shared block ``block_hash``.

        If that block is already cached (another request computed the same prefix), the
        private copy is dropped and the cached one is held instead.
        """
        self._private -= 1
        count = self._refs.get(block_hash)
        if count is not None:
            self._refs[block_hash] = count + 1
        else:
            self._lru.pop(block_hash, None)
            self._refs[block_hash] = 1

    def release(self, shared: Sequence[int], private: int) -> None:
        """Give back a request's blocks; its shared blocks stay cached until evicted."""
        self._private -= private
        refs, lru = self._refs, self._lru
        # Tail first, so the prefix is the most recently used and evicted last.
        for h in reversed(shared):
            count = refs[h]
            if count > 1:
                refs[h] = count - 1
            else:
                del refs[h]
                lru[h] = None
        self._evict_to_fit()

    def _evict_to_fit(self) -> None:
        excess = len(self._refs) + self._private + len(self._lru) - self.num_blocks
        lru = self._lru
        while excess > 0 and lru:
            lru.popitem(last=False)
            self.evicted_blocks += 1
            excess -= 1
