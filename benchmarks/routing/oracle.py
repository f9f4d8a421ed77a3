"""The best prefix-cache hit rate any router could reach on a workload: an upper bound.

Picture one pod with an infinite KV cache that receives every request, in arrival order.
A request's prompt is cut into 16-token blocks (64 bytes under the simulator's 4 bytes
per token rule); its leading blocks that any earlier request also had as leading blocks
are hits, the rest are misses, and then its blocks join the cache. The hit rate is hit
tokens over prompt tokens, as the pods report it
(``vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total``).

No fleet can do better: a real fleet splits the cache over pods (a prefix cached on one
pod does not help a request sent to another), evicts blocks when KV space runs out, and
cannot hit on a prefix whose first request is still being prefilled. A router that keeps
every group on one pod, with enough KV space, reaches it except for those last misses.
"""

from __future__ import annotations

from collections.abc import Iterable

import xxhash

from benchmarks.workloads.request import Request
from benchmarks.workloads.text import BYTES_PER_TOKEN

__all__ = ["BLOCK_TOKENS", "OracleResult", "oracle_hit_rate"]

BLOCK_TOKENS = 16


class OracleResult:
    """Hit and query token counts of the infinite-shared-cache bound."""

    __slots__ = ("hit_tokens", "query_tokens")

    def __init__(self, hit_tokens: int, query_tokens: int) -> None:
        self.hit_tokens = hit_tokens
        self.query_tokens = query_tokens

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


def oracle_hit_rate(requests: Iterable[Request], block_tokens: int = BLOCK_TOKENS) -> OracleResult:
    """Replay ``requests`` in arrival order through one infinite shared block cache."""
    block_bytes = block_tokens * BYTES_PER_TOKEN
    seen: set[int] = set()
    hits = queries = 0
    for request in sorted(requests, key=lambda r: r.arrival_s):
        data = request.prompt_text.encode()
        queries += -(-len(data) // BYTES_PER_TOKEN)
        prev = 0
        matching = True
        for start in range(0, len(data) - block_bytes + 1, block_bytes):
            prev = xxhash.xxh64_intdigest(data[start : start + block_bytes], seed=prev)
            if matching and prev in seen:
                hits += block_tokens
            else:
                matching = False
                seen.add(prev)
    return OracleResult(hits, queries)
