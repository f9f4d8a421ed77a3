"""Deterministic pseudo-text whose simulated token count is exact.

The simulator counts a token per four bytes of UTF-8 (``vllm_sim.tokens``). Every piece of
text made here is ASCII and exactly ``4 * tokens`` bytes long, so a system prompt asked to
be 6000 tokens is 6000 tokens to the simulator, to epp's 64-byte prefix blocks (16 tokens)
and to this package's oracle alike. Words come from a fixed pseudo-vocabulary (no
dictionary, no tokenizer download); the text is a function of the seed string only.
"""

from __future__ import annotations

import random

__all__ = ["BYTES_PER_TOKEN", "count_tokens", "pseudo_text"]

BYTES_PER_TOKEN = 4

_CONSONANTS = "bcdfghjklmnprstvz"
_VOWELS = "aeiou"


def _vocabulary(size: int = 4096) -> tuple[str, ...]:
    rng = random.Random(0x5EED)
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.randint(1, 3)
        word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
        if rng.random() < 0.3:
            word += rng.choice(_CONSONANTS)
        words.add(word)
    return tuple(sorted(words))


_VOCABULARY = _vocabulary()
_MIN_WORD_BYTES = min(len(w) for w in _VOCABULARY) + 1  # with the space after it


def count_tokens(text: str) -> int:
    """Tokens of ``text`` under the simulator's rule: ceil(UTF-8 bytes / 4)."""
    return -(-len(text.encode()) // BYTES_PER_TOKEN)


def pseudo_text(seed: str, tokens: int) -> str:
    """``tokens * 4`` bytes of space-separated pseudo-words, a pure function of ``seed``.

    Different seeds give different text from the first word on, so two prompts made from
    different seeds share no 64-byte prefix block (up to a 1-in-2**64 hash collision).
    """
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    size = tokens * BYTES_PER_TOKEN
    if size == 0:
        return ""
    rng = random.Random(seed)
    words = rng.choices(_VOCABULARY, k=size // _MIN_WORD_BYTES + 1)
    text = " ".join(words)[:size]
    # A cut that ends on a space would make the next piece start with two.
    return text if not text.endswith(" ") else text[:-1] + "x"
