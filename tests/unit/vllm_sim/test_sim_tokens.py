from __future__ import annotations

import pytest
import xxhash

from vllm_sim.tokens import (
    BYTES_PER_TOKEN,
    block_hashes,
    count_tokens,
    model_seed,
    token_ids,
    token_strs,
    tokenize,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("é" * 4, 2), ("x" * 400, 100)],
    ids=["empty", "one-byte", "exact", "spill", "multibyte", "long"],
)
def test_count_tokens_is_utf8_bytes_over_four_rounded_up(text: str, expected: int) -> None:
    assert count_tokens(text) == expected


def test_block_hashes_chain_each_block_on_the_previous() -> None:
    data = b"A" * 64 + b"B" * 64 + b"tail"
    hashes = block_hashes(data, 16, seed=7)
    first = xxhash.xxh64_intdigest(b"A" * 64, seed=7)
    assert hashes == (first, xxhash.xxh64_intdigest(b"B" * 64, seed=first))


def test_block_hash_identifies_the_whole_prefix() -> None:
    same_block_other_prefix = block_hashes(b"C" * 64 + b"B" * 64, 16)
    assert block_hashes(b"A" * 64 + b"B" * 64, 16)[1] != same_block_other_prefix[1]


def test_block_hashes_respect_max_blocks_and_seed() -> None:
    data = b"z" * (16 * BYTES_PER_TOKEN * 10)
    assert len(block_hashes(data, 16)) == 10
    assert len(block_hashes(data, 16, max_blocks=3)) == 3
    assert block_hashes(data, 16, seed=model_seed("a")) != block_hashes(
        data, 16, seed=model_seed("b")
    )


def test_block_hashes_reject_bad_block_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        block_hashes(b"x", 0)


def test_tokenize_text_and_token_ids() -> None:
    text = tokenize("x" * 130, 16)
    assert text.num_tokens == 33
    assert len(text.block_hashes) == 2
    ids = tokenize(list(range(40)), 16)
    assert ids.num_tokens == 40
    assert len(ids.block_hashes) == 2
    assert tokenize(list(range(40)), 16) == ids


def test_token_ids_are_little_endian_words_that_hash_like_the_text() -> None:
    text = "abcdefghi" + "x" * 120
    ids = token_ids(text)
    assert ids[:3] == [int.from_bytes(b"abcd", "little"), int.from_bytes(b"efgh", "little"),
                       int.from_bytes(b"ixxx", "little")]  # fmt: skip
    assert len(ids) == count_tokens(text)
    assert tokenize(ids, 16) == tokenize(text, 16)
    assert token_ids("abcde")[-1] == ord("e")  # the last word is zero-padded
    assert token_strs("abcdé") == ["abcd", "é"]
    assert token_ids([1, -1]) == [1, 0xFFFFFFFF]
