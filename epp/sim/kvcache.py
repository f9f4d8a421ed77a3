"""Block accounting for one simulated pod's KV cache, with vLLM-style prefix caching.

The model follows vLLM's paged KV cache closely enough for routing signals to be honest:

- A running request holds ``ceil((prompt_tokens + generated_so_far) / block_size)``
  blocks. Its full prompt blocks are *shared*: they are keyed by chained block hash and
  reference-counted, so two running requests with one prefix hold those blocks once (as
  vLLM does). The partial prompt tail and generated tokens live in *private* blocks.
- When the last holder of a shared block finishes, the block stays cached but free: it
  joins an LRU and can be reused by a later request with the same prefix. Free cached
  blocks are evicted, least recently used first, whenever in-use plus cached would exceed
  ``num_blocks``. A request's blocks enter the LRU tail-first, so its prefix outlives its
  suffix, as with vLLM's free-block queue.
- ``usage`` counts only blocks held by running requests, like vLLM's
  ``kv_cache_usage_perc``: cached-but-free blocks are reclaimable and do not count.

Capacity is accounted, not enforced: a prompt larger than the whole cache (or decode
growth past it) still runs, since the simulator has no preemption. ``usage`` is then
clamped to 1.0 and the cached LRU is empty.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from epp.sim.tokens import TokenizedPrompt

__all__ = ["Allocation", "KvCache"]


@dataclass(slots=True)
class Allocation:
    """The blocks one running request holds; owned and mutated by ``KvCache``."""

    shared: tuple[int, ...]
    private_blocks: int
    # Leading prompt blocks that were already cached when the request was admitted.
    hit_blocks: int


class KvCache:
    """Paged KV-cache accounting: shared prefix blocks, private blocks, and a free LRU.

    Not thread-safe; all calls come from one event loop and none of them await.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._refcount: dict[int, int] = {}
        # Free but still cached blocks; the first entry is evicted first.
        self._lru: OrderedDict[int, None] = OrderedDict()
        self._private_blocks = 0
        self.evicted_blocks = 0

    @property
    def blocks_in_use(self) -> int:
        """Blocks held by running requests (shared blocks counted once)."""
        return len(self._refcount) + self._private_blocks

    @property
    def cached_free_blocks(self) -> int:
        """Blocks that hold a finished prompt's prefix and can be reused or evicted."""
        return len(self._lru)

    @property
    def usage(self) -> float:
        """Fraction of the cache held by running requests, in [0, 1]."""
        return min(1.0, self.blocks_in_use / self.num_blocks)

    def is_cached(self, block_hash: int) -> bool:
        """Whether a block with this hash is present, in use or free."""
        return block_hash in self._refcount or block_hash in self._lru

    def blocks_needed(self, prompt: TokenizedPrompt) -> int:
        """Blocks that admitting ``prompt`` takes from the free pool (cached-free included)."""
        fresh_shared = sum(1 for h in prompt.block_hashes if h not in self._refcount)
        return fresh_shared + self._private_for(prompt, prompt.num_tokens)

    def free_blocks(self) -> int:
        """Blocks not held by running requests; evictable cached blocks count as free."""
        return max(0, self.num_blocks - self.blocks_in_use)

    def hit_blocks(self, prompt: TokenizedPrompt) -> int:
        """Leading prompt blocks already cached.

        Like vLLM, at least the last prompt token is always recomputed, so a fully cached
        prompt hits one block less than it holds.
        """
        limit = min(len(prompt.block_hashes), max(0, (prompt.num_tokens - 1) // self.block_size))
        hits = 0
        for h in prompt.block_hashes[:limit]:
            if not self.is_cached(h):
                break
            hits += 1
        return hits

    def allocate(self, prompt: TokenizedPrompt) -> Allocation:
        """Take the blocks for ``prompt``'s prefill and return the holding."""
        hits = self.hit_blocks(prompt)
        for h in prompt.block_hashes:
            count = self._refcount.get(h)
            if count is None:
                self._lru.pop(h, None)
                self._refcount[h] = 1
            else:
                self._refcount[h] = count + 1
        private = self._private_for(prompt, prompt.num_tokens)
        self._private_blocks += private
        self._evict_to_fit()
        return Allocation(shared=prompt.block_hashes, private_blocks=private, hit_blocks=hits)

    def grow(self, alloc: Allocation, total_tokens: int) -> None:
        """Resize ``alloc`` to hold ``total_tokens`` tokens (prompt plus generated so far)."""
        want = max(0, -(-total_tokens // self.block_size) - len(alloc.shared))
        if want != alloc.private_blocks:
            self._private_blocks += want - alloc.private_blocks
            alloc.private_blocks = want
            self._evict_to_fit()

    def release(self, alloc: Allocation) -> None:
        """Return ``alloc``'s blocks; its shared blocks stay cached until evicted."""
        self._private_blocks -= alloc.private_blocks
        alloc.private_blocks = 0
        # Tail first, so the prefix is the most recently used and evicted last.
        for h in reversed(alloc.shared):
            count = self._refcount[h]
            if count > 1:
                self._refcount[h] = count - 1
            else:
                del self._refcount[h]
                self._lru[h] = None
        alloc.shared = ()
        self._evict_to_fit()

    def _private_for(self, prompt: TokenizedPrompt, total_tokens: int) -> int:
        return max(0, -(-total_tokens // self.block_size) - len(prompt.block_hashes))

    def _evict_to_fit(self) -> None:
        excess = self.blocks_in_use + len(self._lru) - self.num_blocks
        while excess > 0 and self._lru:
            self._lru.popitem(last=False)
            self.evicted_blocks += 1
            excess -= 1
