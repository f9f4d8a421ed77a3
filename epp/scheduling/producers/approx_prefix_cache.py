"""``approx-prefix-cache-producer``: the prefix index's settings, in the reference's terms.

In the reference (llm-d-router v0.9 on) this producer hashes the prompt and keeps the
per-pod index, and ``prefix-cache-scorer`` only scores what it found. epp's
``prefix-cache-scorer`` does both; a producer configured beside it hands the scorer its
settings (the scorer's ``prefixMatchInfoProducerName``, else the producer named
``approx-prefix-cache-producer``; see :meth:`PrefixCacheScorer.bind`).

Tokens become bytes at the reference's own ratio, :data:`CHARS_PER_TOKEN` (4: its
``averageCharactersPerToken``, and the bytes its tokenizer-free estimate packs into one
pseudo-token), so a block of 64 tokens hashes 256 bytes, as epp does by default.

Parameters, as the reference documents them:

- ``blockSizeTokens`` (16, raised to 64 as the reference does, so 64): block size in
  tokens; ``blockSize`` (deprecated there, not raised): the block size in characters,
  taken as bytes. Not both.
- ``maxPrefixTokensToMatch`` (131072): how much of a prompt is matched, in tokens;
  when > 0 it decides, ``maxPrefixBlocksToMatch`` (2048) is read only when it is 0.
  Both 0 (the reference: the whole prompt) is one context window of 131072 tokens
  here, since epp bounds what it reads of a prompt.
- ``lruCapacityPerServer`` (31250): index entries per endpoint.
- ``autoTune`` (true): the reference may take the block size and capacity from the
  pods' ``vllm:cache_config_info``; epp always uses the configured ones, so the
  flag is accepted and changes nothing.

At the defaults a long prompt is matched over up to 2048 blocks of 256 bytes (512 KiB),
the reference's choice; epp's own default (``prefix-cache-scorer`` alone) is 256 blocks
(64 KiB).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.scheduling.plugin import Params, SettingsPlugin
from epp.scheduling.types import Plugin, TypedName

__all__ = [
    "CHARS_PER_TOKEN",
    "TYPE",
    "ApproxPrefixCacheProducer",
    "PrefixSettings",
    "factory",
    "max_blocks",
]

TYPE = "approx-prefix-cache-producer"
CHARS_PER_TOKEN = 4
DEFAULT_BLOCK_SIZE_TOKENS = 16
# The reference raises smaller token block sizes to this at request time (its docs: "values
# below the minimum of 64 are clamped up"): a quarter of the blocks to hash and index.
MIN_BLOCK_SIZE_TOKENS = 64
DEFAULT_MAX_PREFIX_BLOCKS = 2048
DEFAULT_MAX_PREFIX_TOKENS = 131072
DEFAULT_LRU_CAPACITY_PER_SERVER = 31250


@dataclass(frozen=True, slots=True)
class PrefixSettings:
    """What the prefix scorer hashes and keeps: block size in bytes, blocks per prompt,
    index entries per endpoint."""

    block_size: int
    max_blocks: int
    lru_capacity_per_server: int


def max_blocks(block_size: int, max_tokens: int, max_blocks_given: int) -> int:
    """The reference's cap on blocks: ``max_tokens`` (as bytes) over the block size when
    > 0, else ``max_blocks_given``, else one context window; at least 1."""
    if max_tokens > 0:
        return max(1, max_tokens * CHARS_PER_TOKEN // block_size)
    if max_blocks_given > 0:
        return max_blocks_given
    return max(1, DEFAULT_MAX_PREFIX_TOKENS * CHARS_PER_TOKEN // block_size)


class ApproxPrefixCacheProducer(SettingsPlugin):
    """Holds :class:`PrefixSettings` for the prefix scorers that bind to it."""

    __slots__ = ("settings",)

    TYPE = TYPE

    def __init__(self, name: str | None, settings: PrefixSettings) -> None:
        super().__init__(name)
        self.settings = settings


def factory(name: str, parameters: Mapping[str, Any]) -> ApproxPrefixCacheProducer:
    params = Params(TypedName(TYPE, name), parameters)
    params.get_bool("autoTune", True)
    if params.has("blockSize") and params.has("blockSizeTokens"):
        params.fail("blockSize", "and blockSizeTokens are two ways to say one thing; give one")
    tokens = params.get_int("blockSizeTokens", DEFAULT_BLOCK_SIZE_TOKENS, min_value=1)
    tokens = max(tokens, MIN_BLOCK_SIZE_TOKENS)
    block_size = params.get_int("blockSize", tokens * CHARS_PER_TOKEN, min_value=1)
    blocks = params.get_int("maxPrefixBlocksToMatch", DEFAULT_MAX_PREFIX_BLOCKS, min_value=0)
    max_tokens = params.get_int("maxPrefixTokensToMatch", DEFAULT_MAX_PREFIX_TOKENS, min_value=0)
    capacity = params.get_int("lruCapacityPerServer", DEFAULT_LRU_CAPACITY_PER_SERVER, min_value=1)
    params.finish()
    settings = PrefixSettings(block_size, max_blocks(block_size, max_tokens, blocks), capacity)
    return ApproxPrefixCacheProducer(name, settings)


_: type[Plugin] = ApproxPrefixCacheProducer
