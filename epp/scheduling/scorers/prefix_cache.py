"""``prefix-cache-scorer``: prefer endpoints that were recently sent the same prompt prefix.

An approximation of each model server's prefix cache, kept from routing decisions alone
(no server reports what it holds): the prompt's UTF-8 bytes are cut into full blocks of
``blockSize`` bytes (the trailing partial block is dropped), at most
``maxPrefixBlocksToMatch`` of them, and hashed in a chain seeded by the model name::

    seed = xxh64(model)
    h_0  = xxh64(block_0, seed=seed)
    h_i  = xxh64(block_i, seed=h_{i-1})

so ``h_i`` stands for the whole prefix up to block ``i``, and one model's prefixes never
match another's. The score of an endpoint is the number of leading hashes it holds over
the number of hashes; 0 for every endpoint when the prompt has no full block.

As in the reference EPP the pick is recorded at routing time (``on_pick``), not when the
server reports a hit: a burst of one prefix sees the first pick at once, and it is the
load scorers that must spread such a burst (see ``tests/unit/scheduling/
test_prefix_burst.py`` for how the weights trade the two off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import xxhash

from epp.datalayer.endpoint import Endpoint
from epp.distribution import Distribution
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.prefix_index import DEFAULT_CAPACITY_PER_ENDPOINT, PrefixIndex
from epp.scheduling.stats import PREFIX_HIT_BYTES_BOUNDS, PREFIX_HIT_RATIO_BOUNDS, PrefixStats
from epp.scheduling.types import (
    CycleState,
    EndpointRemovalHook,
    LLMRequest,
    PostPick,
    ScoreAdder,
    Scorer,
    TypedName,
)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_LRU_CAPACITY_PER_SERVER",
    "DEFAULT_MAX_PREFIX_BLOCKS",
    "TYPE",
    "PrefixCacheScorer",
    "factory",
    "prompt_block_hashes",
]

TYPE = "prefix-cache-scorer"
DEFAULT_BLOCK_SIZE = 64  # bytes; about 16 tokens
DEFAULT_MAX_PREFIX_BLOCKS = 256
DEFAULT_LRU_CAPACITY_PER_SERVER = DEFAULT_CAPACITY_PER_ENDPOINT

_xxh64 = xxhash.xxh64_intdigest


def prompt_block_hashes(model: str, prompt: str, block_size: int, max_blocks: int) -> list[int]:
    """The chained xxh64 hashes of the prompt's full ``block_size``-byte blocks.

    >>> len(prompt_block_hashes("m", "x" * 130, 64, 256))
    2
    """
    # A UTF-8 character is at least one byte, so the first block_size * max_blocks
    # characters hold every byte that can be hashed; a 1 MB prompt is not encoded whole.
    # surrogatepass: JSON lets a client send a lone surrogate ("\ud800").
    data = prompt[: block_size * max_blocks].encode("utf-8", "surrogatepass")
    count = min(len(data) // block_size, max_blocks)
    h = _xxh64(model.encode("utf-8", "surrogatepass"))
    hashes = [0] * count
    start = 0
    for i in range(count):
        end = start + block_size
        h = _xxh64(data[start:end], h)
        hashes[i] = h
        start = end
    return hashes


class PrefixCacheScorer(NamedPlugin):
    """Scores prefix affinity and, as a PostPick, records the chosen endpoint's prefix.

    The hashes are computed once per cycle and left in the :class:`CycleState` for
    ``on_pick``, which also counts how much the chosen endpoint was found to hold
    (:class:`PrefixStats`). ``on_endpoints_removed`` drops removed endpoints from the
    index.
    """

    __slots__ = (
        "_block_size",
        "_hit_bytes",
        "_hit_ratios",
        "_index",
        "_match_key",
        "_max_blocks",
        "_state_key",
    )

    TYPE = TYPE

    def __init__(
        self,
        name: str | None = None,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_prefix_blocks: int = DEFAULT_MAX_PREFIX_BLOCKS,
        lru_capacity_per_server: int = DEFAULT_LRU_CAPACITY_PER_SERVER,
        index: PrefixIndex | None = None,
    ) -> None:
        super().__init__(name)
        if block_size < 1 or max_prefix_blocks < 1:
            raise ValueError("block_size and max_prefix_blocks must be >= 1")
        self._block_size = block_size
        self._max_blocks = max_prefix_blocks
        self._index = index if index is not None else PrefixIndex(lru_capacity_per_server)
        self._state_key = f"{self._typed_name}/block-hashes"
        self._match_key = f"{self._typed_name}/matched"
        self._hit_ratios = Distribution(PREFIX_HIT_RATIO_BOUNDS)
        self._hit_bytes = Distribution(PREFIX_HIT_BYTES_BOUNDS)

    @property
    def index(self) -> PrefixIndex:
        return self._index

    def index_entries(self) -> int:
        return self._index.size()

    @property
    def hit_ratios(self) -> Distribution:
        return self._hit_ratios

    @property
    def hit_bytes(self) -> Distribution:
        return self._hit_bytes

    @property
    def prompt_chars(self) -> int:
        # Every hashed byte lies in this many characters (see prompt_block_hashes).
        return self._block_size * self._max_blocks

    def block_hashes(self, cycle: CycleState, request: LLMRequest) -> list[int]:
        """The request's block hashes, computed on first use in this cycle."""
        hashes: list[int] | None = cycle.get(self._state_key)
        if hashes is None:
            hashes = prompt_block_hashes(
                request.model, request.prompt, self._block_size, self._max_blocks
            )
            cycle[self._state_key] = hashes
        return hashes

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        hashes = self.block_hashes(cycle, request)
        matched = self._index.match(hashes) if hashes else None
        cycle[self._match_key] = matched
        if not matched:
            return [0.0] * len(endpoints)
        total = len(hashes)
        get = matched.get
        return [get(ep, 0) / total for ep in endpoints]

    def add_scores(
        self,
        cycle: CycleState,
        request: LLMRequest,
        endpoints: Sequence[Endpoint],
        weight: float,
        totals: list[float] | None,
    ) -> list[float]:
        """Adds ``weight * matched / total`` at the matched endpoints only: elsewhere the
        score is 0 and adding ``weight * 0.0`` changes nothing. O(endpoints matched),
        plus a C-level ``index`` scan per matched endpoint, instead of a dict lookup per
        candidate."""
        hashes = self.block_hashes(cycle, request)
        matched = self._index.match(hashes) if hashes else None
        cycle[self._match_key] = matched
        n = len(endpoints)
        if totals is None:
            totals = [0.0] * n
        if not matched:
            return totals
        total = len(hashes)
        if len(matched) * 16 > n:  # a prefix most candidates hold: one pass is cheaper
            get = matched.get
            return [
                t + weight * (get(ep, 0) / total) for t, ep in zip(totals, endpoints, strict=True)
            ]
        index = endpoints.index
        for endpoint, blocks in matched.items():
            add = weight * (blocks / total)
            at = -1
            while True:  # every position: nothing here needs candidates to be distinct
                try:
                    at = index(endpoint, at + 1)
                except ValueError:
                    break
                totals[at] = totals[at] + add
        return totals

    def on_pick(self, cycle: CycleState, request: LLMRequest, chosen: Endpoint) -> None:
        hashes = self.block_hashes(cycle, request)
        if self._match_key in cycle:  # scored in this cycle: record how much was found
            matched = cycle[self._match_key]
            blocks = matched.get(chosen, 0) if matched else 0
            self._hit_bytes.observe(blocks * self._block_size)
            if hashes:
                self._hit_ratios.observe(blocks / len(hashes))
        self._index.add(chosen, hashes)

    def on_endpoints_removed(self, endpoints: Sequence[Endpoint]) -> None:
        for endpoint in endpoints:
            self._index.remove_endpoint(endpoint)


def factory(name: str, parameters: Mapping[str, Any]) -> PrefixCacheScorer:
    params = Params(TypedName(TYPE, name), parameters)
    block_size = params.get_int("blockSize", DEFAULT_BLOCK_SIZE, min_value=1)
    max_blocks = params.get_int("maxPrefixBlocksToMatch", DEFAULT_MAX_PREFIX_BLOCKS, min_value=1)
    capacity = params.get_int("lruCapacityPerServer", DEFAULT_LRU_CAPACITY_PER_SERVER, min_value=1)
    params.finish()
    return PrefixCacheScorer(
        name, block_size=block_size, max_prefix_blocks=max_blocks, lru_capacity_per_server=capacity
    )


_scorer: type[Scorer] = PrefixCacheScorer
_adder: type[ScoreAdder] = PrefixCacheScorer
_post_pick: type[PostPick] = PrefixCacheScorer
_removal: type[EndpointRemovalHook] = PrefixCacheScorer
_stats: type[PrefixStats] = PrefixCacheScorer
