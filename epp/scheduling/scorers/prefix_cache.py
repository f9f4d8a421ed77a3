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

Parameters: ``blockSize`` (bytes) or ``blockSizeTokens`` (the reference's, in tokens of
:data:`~epp.scheduling.producers.approx_prefix_cache.CHARS_PER_TOKEN` = 4 bytes, its
``averageCharactersPerToken``: 16 tokens are 64 bytes); ``maxPrefixBlocksToMatch`` or
``maxPrefixTokensToMatch`` (tokens, which decide when both are given, as in the
reference); ``lruCapacityPerServer``; ``autoTune`` (accepted; epp always uses the
configured sizes). With an ``approx-prefix-cache-producer`` configured (the reference's
layout since it moved hashing there), the producer's settings are used instead:
``prefixMatchInfoProducerName`` names it, else the one named after its type; sizes on
the scorer as well are an error. ``matchLengthWeight`` w (0) and
``matchLengthScaleTokens`` L (8192) blend in the matched length, as the reference does:
``w * min(1, matched tokens / L) ** 2 + (1 - w) * matched / total``.

As in the reference EPP the pick is recorded at routing time (``on_pick``), not when the
server reports a hit: a burst of one prefix sees the first pick at once, and it is the
load scorers that must spread such a burst (see ``tests/unit/scheduling/
test_prefix_burst.py`` for how the weights trade the two off).

Deferred (``set_deferred(True)``, what epp's director asks): ``on_pick`` only notes the
pick, and the inserts into the index (about 150 µs for a new 32 KB prompt at 256
endpoints, most of a decision's cost) wait for :meth:`~PrefixCacheScorer.flush_deferred`,
which epp runs on the next turn of its loop, after the routing answer went out; so
does hashing a new prompt past its first block (no endpoint holding that block tells a
miss on its own, about 25 µs of hashing saved for 32 KB). The
reference EPP updates its index from a goroutine for the same reason; here nothing is
lost meanwhile: matching also reads the picks not yet inserted (a handful: their
hashes are compared with the request's by bisection, as the index does), so a decision
is the one the synchronous index would give, but at the LRU's edge: entries that the
noted picks will push out of a full endpoint still count until they are inserted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import xxhash

from epp.datalayer.endpoint import Endpoint
from epp.distribution import Distribution
from epp.scheduling.errors import SchedulerConfigError
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.prefix_index import DEFAULT_CAPACITY_PER_ENDPOINT, PrefixIndex
from epp.scheduling.producers.approx_prefix_cache import (
    CHARS_PER_TOKEN,
    ApproxPrefixCacheProducer,
    PrefixSettings,
)
from epp.scheduling.producers.approx_prefix_cache import TYPE as PRODUCER_TYPE
from epp.scheduling.stats import PREFIX_HIT_BYTES_BOUNDS, PREFIX_HIT_RATIO_BOUNDS, PrefixStats
from epp.scheduling.types import (
    AffinityHint,
    CycleState,
    EndpointRemovalHook,
    LLMRequest,
    PeerAware,
    PickListener,
    Plugin,
    PostPick,
    ScoreAdder,
    Scorer,
    SharedIndex,
    TypedName,
)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_LRU_CAPACITY_PER_SERVER",
    "DEFAULT_MAX_PREFIX_BLOCKS",
    "TYPE",
    "PrefixCacheScorer",
    "factory",
    "first_block_hash",
    "prompt_block_hashes",
]

TYPE = "prefix-cache-scorer"
# Bytes: about 64 tokens, the smallest block the reference (llm-d-router v0.10) uses. A
# quarter of the blocks of 16-token ones to hash, match and index per request (issue 10's
# scheduling cost), with the same reach, and no loss of routing quality on the routing
# benchmark (see the commit that set it).
DEFAULT_BLOCK_SIZE = 256
DEFAULT_MAX_PREFIX_BLOCKS = 256
DEFAULT_LRU_CAPACITY_PER_SERVER = DEFAULT_CAPACITY_PER_ENDPOINT
DEFAULT_MATCH_LENGTH_SCALE_TOKENS = 8192

_xxh64 = xxhash.xxh64_intdigest
# Deferred picks kept before they are inserted whatever happens: each costs a bisection
# per decision until then, and epp flushes every loop turn.
_MAX_PENDING = 64
# Endpoints holding any of a prompt that are all hinted to a sampling filter; past this,
# only those holding the most.
_HINT_ALL_UP_TO = 16


def _leading_run(hashes: Sequence[int], held: Sequence[int]) -> int:
    """How many leading hashes of ``hashes`` ``held`` has at the same places: chained
    hashes agree up to a point and never after it, so the point is found by bisection.

    >>> _leading_run([1, 2, 3, 4], [1, 2, 9])
    2
    """
    lo, hi = 0, min(len(hashes), len(held))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if hashes[mid - 1] == held[mid - 1]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def first_block_hash(model: str, prompt: str, block_size: int) -> int | None:
    """``prompt_block_hashes(...)[0]`` without hashing the other blocks; None when the
    prompt has no full block.

    >>> first_block_hash("m", "x" * 130, 64) == prompt_block_hashes("m", "x" * 130, 64, 9)[0]
    True
    """
    # The UTF-8 of a prefix is a prefix of the UTF-8; block_size characters are at least
    # block_size bytes, so fewer bytes mean the whole prompt is shorter than a block.
    data = prompt[:block_size].encode("utf-8", "surrogatepass")
    if len(data) < block_size:
        return None
    return _xxh64(data[:block_size], _xxh64(model.encode("utf-8", "surrogatepass")))


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


class _NotedPick:
    """A pick waiting for the index (deferred mode); ``hashes`` None until computed."""

    __slots__ = ("endpoint", "hashes", "request")

    def __init__(self, endpoint: Endpoint, request: LLMRequest, hashes: list[int] | None) -> None:
        self.endpoint = endpoint
        self.request = request
        self.hashes = hashes


class PrefixCacheScorer(NamedPlugin):
    """Scores prefix affinity and, as a PostPick, records the chosen endpoint's prefix.

    The hashes are computed once per cycle and left in the :class:`CycleState` for
    ``on_pick``, which also counts how much the chosen endpoint was found to hold
    (:class:`PrefixStats`). ``on_endpoints_removed`` drops removed endpoints from the
    index.
    """

    __slots__ = (
        "_block_size",
        "_deferred",
        "_hit_bytes",
        "_hit_ratios",
        "_index",
        "_length_scale_bytes",
        "_length_weight",
        "_listener",
        "_match_key",
        "_max_blocks",
        "_pending",
        "_producer",
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
        producer: str | None = None,
        match_length_weight: float = 0.0,
        match_length_scale_tokens: int = DEFAULT_MATCH_LENGTH_SCALE_TOKENS,
    ) -> None:
        super().__init__(name)
        if block_size < 1 or max_prefix_blocks < 1:
            raise ValueError("block_size and max_prefix_blocks must be >= 1")
        if not 0.0 <= match_length_weight <= 1.0 or match_length_scale_tokens < 1:
            raise ValueError("match_length_weight must lie in [0, 1], the scale be >= 1")
        self._block_size = block_size
        self._max_blocks = max_prefix_blocks
        self._index = index if index is not None else PrefixIndex(lru_capacity_per_server)
        # The producer to take settings from: a name, "" for the default one if any.
        self._producer = producer
        self._length_weight = match_length_weight
        self._length_scale_bytes = match_length_scale_tokens * CHARS_PER_TOKEN
        self._state_key = f"{self._typed_name}/block-hashes"
        self._match_key = f"{self._typed_name}/matched"
        self._hit_ratios = Distribution(PREFIX_HIT_RATIO_BOUNDS)
        self._hit_bytes = Distribution(PREFIX_HIT_BYTES_BOUNDS)
        self._listener: PickListener | None = None
        # Picks noted but not yet in the index (deferred mode), oldest first.
        self._pending: list[_NotedPick] = []
        self._deferred = False

    @property
    def index(self) -> PrefixIndex:
        return self._index

    @property
    def index_key(self) -> str:
        """The plugin's name and block size: replicas with the same configuration share
        the index under this key (see :class:`~epp.scheduling.types.SharedIndex`)."""
        return f"{self._typed_name.name}/{self._block_size}"

    def set_pick_listener(self, listener: PickListener | None) -> None:
        self._listener = listener

    @property
    def settings(self) -> PrefixSettings:
        return PrefixSettings(self._block_size, self._max_blocks, self._index.capacity_per_endpoint)

    @property
    def producer_name(self) -> str | None:
        """The producer this scorer takes its settings from, when it has one."""
        if self._producer is None:
            return None
        return self._producer or PRODUCER_TYPE

    def bind(self, peers: Mapping[str, Plugin]) -> None:
        """Take the settings of the ``approx-prefix-cache-producer`` this scorer reads
        (see the module docstring); without one, keep its own."""
        if self._producer is None:
            return
        name = self._producer or PRODUCER_TYPE
        producer = peers.get(name)
        if producer is None and not self._producer:
            return
        if not isinstance(producer, ApproxPrefixCacheProducer):
            raise SchedulerConfigError(
                f"plugin {self._typed_name.name!r} (type {TYPE!r}): "
                f"prefixMatchInfoProducerName {name!r} names no {PRODUCER_TYPE}"
            )
        settings = producer.settings
        self._block_size = settings.block_size
        self._max_blocks = settings.max_blocks
        self._index = PrefixIndex(settings.lru_capacity_per_server)

    def matched(self, cycle: CycleState, request: LLMRequest) -> dict[Endpoint, int] | None:
        """Leading blocks each endpoint holds of this request's prompt (None: none
        does), computed once per cycle, for this scorer and for plugins that ask."""
        if self._match_key in cycle:
            found: dict[Endpoint, int] | None = cycle[self._match_key]
            return found
        if self._state_key not in cycle and not self._pending:
            # A new prompt, the common miss: no endpoint holds its first block, so none
            # holds any. Told from that block alone; the others are hashed when the pick
            # is recorded (deferred: after the routing answer went out).
            first = first_block_hash(request.model, request.prompt, self._block_size)
            if first is None:
                cycle[self._state_key] = []
                cycle[self._match_key] = None
                return None
            if not self._index.match((first,)):
                cycle[self._match_key] = None
                return None
        hashes = self.block_hashes(cycle, request)
        matched = self._index.match(hashes) if hashes else None
        if self._pending and hashes:
            matched = self._match_pending(hashes, matched)
        cycle[self._match_key] = matched
        return matched

    def preferred(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Collection[Endpoint]:
        """The endpoints holding the longest run of this prompt's blocks; when only a few
        hold any (at most ``_HINT_ALL_UP_TO``), all of them: the next best when the best
        is busy. Many holders (a system prompt every pod has) cost one pass over them."""
        matched = self.matched(cycle, request)
        if not matched:
            return ()
        if len(matched) <= _HINT_ALL_UP_TO:
            return matched.keys()
        deepest = max(matched.values())
        return [ep for ep, blocks in matched.items() if blocks == deepest]

    def _match_pending(
        self, hashes: list[int], matched: dict[Endpoint, int] | None
    ) -> dict[Endpoint, int] | None:
        """``matched`` with the picks not yet in the index counted in, as the index would
        count them: an endpoint holds the longer of its two runs."""
        found = dict(matched) if matched else {}
        for pick in self._pending:
            depth = _leading_run(hashes, self._hashes_of(pick))
            if depth > found.get(pick.endpoint, 0):
                found[pick.endpoint] = depth
        return found or None

    def set_deferred(self, deferred: bool) -> None:
        if not deferred:
            self.flush_deferred()
        self._deferred = deferred

    def flush_deferred(self) -> None:
        pending, self._pending = self._pending, []
        for pick in pending:
            hashes = self._hashes_of(pick)
            if hashes:
                self._record(pick.endpoint, hashes)

    def _hashes_of(self, pick: _NotedPick) -> list[int]:
        """A noted pick's block hashes, computed on first use."""
        if pick.hashes is None:
            request = pick.request
            pick.hashes = prompt_block_hashes(
                request.model, request.prompt, self._block_size, self._max_blocks
            )
        return pick.hashes

    def _record(self, endpoint: Endpoint, hashes: list[int]) -> None:
        self._index.add(endpoint, hashes)
        if self._listener is not None:
            self._listener(self.index_key, endpoint, hashes)

    def _blend(self, blocks: int, total: int) -> float:
        ratio = blocks / total
        weight = self._length_weight
        length = min(1.0, blocks * self._block_size / self._length_scale_bytes)
        return weight * length * length + (1.0 - weight) * ratio

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
        matched = self.matched(cycle, request)
        if not matched:
            return [0.0] * len(endpoints)
        total = len(self.block_hashes(cycle, request))
        get = matched.get
        if self._length_weight:
            return [self._blend(get(ep, 0), total) for ep in endpoints]
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
        matched = self.matched(cycle, request)
        n = len(endpoints)
        if totals is None:
            totals = [0.0] * n
        if not matched:
            return totals
        total = len(self.block_hashes(cycle, request))
        if self._length_weight:  # an endpoint holding nothing scores 0 here too
            return [
                t + weight * self._blend(matched.get(ep, 0), total)
                for t, ep in zip(totals, endpoints, strict=True)
            ]
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
        # None: not hashed in this cycle (a miss told by the first block, or not scored).
        hashes: list[int] | None = cycle.get(self._state_key)
        if self._match_key in cycle:  # scored in this cycle: record how much was found
            matched = cycle[self._match_key]
            blocks = matched.get(chosen, 0) if matched else 0
            self._hit_bytes.observe(blocks * self._block_size)
            if hashes is None:  # a full first block that nobody held
                self._hit_ratios.observe(0.0)
            elif hashes:
                self._hit_ratios.observe(blocks / len(hashes))
        if self._deferred:
            if hashes == []:
                return
            self._pending.append(_NotedPick(chosen, request, hashes))
            if len(self._pending) >= _MAX_PENDING:  # nobody flushed: bound the list
                self.flush_deferred()
            return
        if hashes is None:
            hashes = self.block_hashes(cycle, request)
        if hashes:
            self._record(chosen, hashes)

    def on_endpoints_removed(self, endpoints: Sequence[Endpoint]) -> None:
        if self._pending:
            gone = set(endpoints)
            self._pending = [pick for pick in self._pending if pick.endpoint not in gone]
        for endpoint in endpoints:
            self._index.remove_endpoint(endpoint)


_SIZE_PARAMETERS = (
    "blockSize",
    "blockSizeTokens",
    "maxPrefixBlocksToMatch",
    "maxPrefixTokensToMatch",
    "lruCapacityPerServer",
)


def factory(name: str, parameters: Mapping[str, Any]) -> PrefixCacheScorer:
    params = Params(TypedName(TYPE, name), parameters)
    if params.has("blockSize") and params.has("blockSizeTokens"):
        params.fail("blockSize", "and blockSizeTokens are two ways to say one thing; give one")
    tokens = params.get_optional_int("blockSizeTokens", min_value=1)
    default_size = DEFAULT_BLOCK_SIZE if tokens is None else tokens * CHARS_PER_TOKEN
    block_size = params.get_int("blockSize", default_size, min_value=1)
    max_blocks = params.get_int("maxPrefixBlocksToMatch", DEFAULT_MAX_PREFIX_BLOCKS, min_value=1)
    max_tokens = params.get_optional_int("maxPrefixTokensToMatch", min_value=1)
    if max_tokens is not None:  # as in the reference, the token cap wins
        max_blocks = max(1, max_tokens * CHARS_PER_TOKEN // block_size)
    capacity = params.get_int("lruCapacityPerServer", DEFAULT_LRU_CAPACITY_PER_SERVER, min_value=1)
    params.get_bool("autoTune", True)
    producer = params.get_str("prefixMatchInfoProducerName")
    if producer and any(params.has(key) for key in _SIZE_PARAMETERS):
        given = next(key for key in _SIZE_PARAMETERS if params.has(key))
        params.fail(given, f"is set on the producer {producer!r}, not here")
    weight = params.get_float("matchLengthWeight", 0.0, min_value=0.0)
    if weight > 1.0:
        params.fail("matchLengthWeight", f"must be at most 1.0, got {weight!r}")
    scale = params.get_int("matchLengthScaleTokens", DEFAULT_MATCH_LENGTH_SCALE_TOKENS, min_value=1)
    params.finish()
    own_sizes = any(params.has(key) for key in _SIZE_PARAMETERS)
    return PrefixCacheScorer(
        name,
        block_size=block_size,
        max_prefix_blocks=max_blocks,
        lru_capacity_per_server=capacity,
        # None: sizes of its own, bind to no producer; "": the default producer, if any.
        producer=producer or (None if own_sizes else ""),
        match_length_weight=weight,
        match_length_scale_tokens=scale,
    )


_scorer: type[Scorer] = PrefixCacheScorer
_adder: type[ScoreAdder] = PrefixCacheScorer
_post_pick: type[PostPick] = PrefixCacheScorer
_removal: type[EndpointRemovalHook] = PrefixCacheScorer
_peer: type[PeerAware] = PrefixCacheScorer
_stats: type[PrefixStats] = PrefixCacheScorer
_shared: type[SharedIndex] = PrefixCacheScorer
_hint: type[AffinityHint] = PrefixCacheScorer
