"""The batch format: what one replica publishes decodes to the same batch, and bytes that
are not a batch are refused before they cost memory."""

from __future__ import annotations

import struct

import pytest

from epp.sync.codec import MAX_HASHES, MAX_MESSAGE_BYTES, Batch, CodecError, Pick, decode, encode

HASHES = [0, 1, 2**64 - 1, 0x0123456789ABCDEF]


def test_a_batch_survives_the_round_trip() -> None:
    batch = Batch(
        "host-1",
        counts={"10.0.0.1:8000": 3, "10.0.0.2:8000": 0},
        picks=(Pick("prefix-cache-scorer/64", "10.0.0.1:8000", HASHES),),
        full=True,
    )
    assert decode(encode(batch)) == batch


@pytest.mark.parametrize(
    "batch",
    [
        Batch("r"),
        Batch("r", full=True, goodbye=True),
        Batch("répli", picks=(Pick("k", "a", []),)),
    ],
    ids=["empty", "goodbye", "utf8-and-no-hashes"],
)
def test_edge_batches_round_trip(batch: Batch) -> None:
    assert decode(encode(batch)) == batch


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"EPS2" + bytes(8),
        encode(Batch("r", counts={"a": 1}))[:-1],
        encode(Batch("r")) + b"x",
        b"EPS1\x00\x02\xff\xfe" + struct.pack("<HH", 0, 0),
        b"EPS1\x00\x01r"
        + struct.pack("<H", 0)
        + struct.pack("<H", 1)
        + b"\x01k\x01a"
        + struct.pack("<H", MAX_HASHES + 1),
        b"EPS1\x00\x01r" + struct.pack("<H", 60_000),
        b"EPS1" + bytes(MAX_MESSAGE_BYTES),
    ],
    ids=[
        "empty",
        "bad-magic",
        "truncated",
        "trailing-bytes",
        "not-utf8",
        "too-many-hashes",
        "counts-past-the-end",
        "oversize",
    ],
)
def test_what_is_not_a_batch_is_refused(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)


@pytest.mark.parametrize(
    "batch",
    [
        Batch("x" * 256),
        Batch("r", counts={"a": -1}),
        Batch("r", picks=[Pick("k", "a", [0] * (MAX_HASHES + 1))]),
    ],
    ids=["long-name", "negative-count", "too-many-hashes"],
)
def test_what_cannot_be_encoded_is_refused(batch: Batch) -> None:
    with pytest.raises(CodecError):
        encode(batch)
