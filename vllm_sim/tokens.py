"""Deterministic token counting and prefix-block hashing, with no tokenizer download.

A "token" here is four bytes of UTF-8: ``count_tokens(text) == ceil(len(text.encode()) / 4)``.
Four bytes per token is the usual rule of thumb for English under BPE tokenizers, it costs
O(1) after encoding (a 10 MB prompt counts instantly, unlike a regex scan), and it lines
up with the reference EPP's prefix blocks of 64 characters per 16 tokens, so a router that
hashes the body in fixed-size byte blocks sees the same block boundaries as this simulator.

Token-id prompts (``/v1/completions`` with ``prompt: [1, 2, 3]``) count one token per id
and hash each id as 4 little-endian bytes, so a block is still ``4 * block_size`` bytes.

``token_ids`` gives a text's ids for ``/tokenize`` and the render endpoints: each 4-byte
chunk read as a little-endian uint32 (the last one zero-padded). Sending those ids back as a
token-id prompt yields the same count and the same full-block hashes as the text.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

__all__ = [
    "BYTES_PER_TOKEN",
    "TokenizedPrompt",
    "block_hashes",
    "count_tokens",
    "model_seed",
    "token_ids",
    "token_strs",
    "tokenize",
]

BYTES_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class TokenizedPrompt:
    """A prompt reduced to what the KV cache needs: its length and its full-block hashes."""

    num_tokens: int
    # Chained hashes of the leading full blocks only: vLLM caches full blocks, never the
    # partial tail.
    block_hashes: tuple[int, ...]


def count_tokens(text: str) -> int:
    """Number of simulated tokens in ``text``: ceil(UTF-8 bytes / 4)."""
    return -(-len(text.encode()) // BYTES_PER_TOKEN)


def model_seed(model: str) -> int:
    """Seed for a model's first block, so two models (or LoRA adapters) never share blocks."""
    return xxhash.xxh64_intdigest(model.encode())


def block_hashes(
    data: bytes, block_size_tokens: int, *, seed: int = 0, max_blocks: int | None = None
) -> tuple[int, ...]:
    """Chained xxh64 hashes of the full ``block_size_tokens``-token blocks of ``data``.

    Block ``i`` is hashed with the hash of block ``i - 1`` as its seed (``seed`` for the
    first), so a block's hash identifies the whole prefix that ends with it. At most
    ``max_blocks`` hashes are returned: a cache of that many blocks could hold no more.
    """
    if block_size_tokens <= 0:
        raise ValueError(f"block_size_tokens must be positive, got {block_size_tokens}")
    block_bytes = block_size_tokens * BYTES_PER_TOKEN
    n = len(data) // block_bytes
    if max_blocks is not None:
        n = min(n, max_blocks)
    view = memoryview(data)
    out: list[int] = []
    prev = seed
    for i in range(n):
        prev = xxhash.xxh64_intdigest(view[i * block_bytes : (i + 1) * block_bytes], seed=prev)
        out.append(prev)
    return tuple(out)


def tokenize(
    prompt: str | Sequence[int],
    block_size_tokens: int,
    *,
    seed: int = 0,
    max_blocks: int | None = None,
) -> TokenizedPrompt:
    """Count a text or token-id prompt and hash its full blocks (see the module docstring)."""
    if isinstance(prompt, str):
        data = prompt.encode()
        num_tokens = -(-len(data) // BYTES_PER_TOKEN)
    else:
        # Ids outside 0..2**32 are masked rather than rejected: only equality matters here.
        data = b"".join((i & 0xFFFFFFFF).to_bytes(4, "little") for i in prompt)
        num_tokens = len(prompt)
    hashes = block_hashes(data, block_size_tokens, seed=seed, max_blocks=max_blocks)
    return TokenizedPrompt(num_tokens=num_tokens, block_hashes=hashes)


def _id_bytes(prompt: str | Sequence[int]) -> bytes:
    if isinstance(prompt, str):
        data = prompt.encode()
        return data + b"\0" * (-len(data) % BYTES_PER_TOKEN)
    return b"".join((i & 0xFFFFFFFF).to_bytes(4, "little") for i in prompt)


def token_ids(prompt: str | Sequence[int]) -> list[int]:
    """The simulated token ids of a text (see the module docstring), or token ids masked."""
    if not isinstance(prompt, str):
        return [i & 0xFFFFFFFF for i in prompt]
    ids = array("I", _id_bytes(prompt))
    if ids.itemsize != BYTES_PER_TOKEN:  # pragma: no cover - no such platform in use
        raise RuntimeError("array('I') is not 4 bytes wide here")
    if sys.byteorder == "big":  # pragma: no cover
        ids.byteswap()
    return ids.tolist()


def token_strs(prompt: str | Sequence[int]) -> list[str]:
    """The text of each simulated token (undecodable bytes replaced, padding dropped)."""
    data = _id_bytes(prompt)
    return [
        data[i : i + BYTES_PER_TOKEN].rstrip(b"\0").decode("utf-8", "replace")
        for i in range(0, len(data), BYTES_PER_TOKEN)
    ]
