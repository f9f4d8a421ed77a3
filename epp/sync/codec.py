"""The bytes one replica publishes to the others: a batch of its routing decisions.

A batch carries the replica's id, the in-flight counts it has *now* on the endpoints
whose count changed (all of them, and ``full``, in a heartbeat: an endpoint left out of
a full batch has 0), and the prefixes it recorded at its picks since the last batch.

Counts are absolute, not +1/-1 deltas: pub/sub delivers at most once, so a lost delta
would skew a count until the replica went away, while a lost absolute count is
corrected by the next batch or heartbeat.

Layout (little-endian)::

    magic "EPS1" | u8 flags (bit 0: full, bit 1: goodbye) | u8 n + replica id
    u16 count entries, each: u8 n + address | u32 count
    u16 picks, each: u8 n + index key | u8 n + address | u16 n + n x u64 block hash

Whoever can publish on the channel can send anything, so :func:`decode` checks every
length against the bytes left and the bounds below before it allocates, and raises
:class:`CodecError` on anything else.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MAX_HASHES",
    "MAX_MESSAGE_BYTES",
    "Batch",
    "CodecError",
    "Pick",
    "decode",
    "encode",
]

MAGIC = b"EPS1"
MAX_MESSAGE_BYTES = 1024 * 1024  # larger batches are split by the publisher
MAX_HASHES = 8192  # the most blocks a prefix scorer can be configured to match
_MAX_ENTRIES = 65_535
_FULL = 1
_GOODBYE = 2
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_SWAP = sys.byteorder != "little"


class CodecError(ValueError):
    """The bytes are not a batch this version can read."""


@dataclass(frozen=True, slots=True)
class Pick:
    """A prefix recorded at a pick: the index's key, the endpoint, the block hashes."""

    key: str
    address: str
    hashes: Sequence[int]


@dataclass(frozen=True, slots=True)
class Batch:
    replica: str
    counts: Mapping[str, int] = field(default_factory=dict)
    picks: Sequence[Pick] = ()
    full: bool = False  # counts hold every endpoint with requests in flight
    goodbye: bool = False  # the replica is stopping: forget it now


def encode(batch: Batch) -> bytes:
    """The batch's bytes; raises :class:`CodecError` for a name over 255 bytes, a count
    outside u32, more than 65,535 entries or more than :data:`MAX_HASHES` hashes."""
    if len(batch.counts) > _MAX_ENTRIES or len(batch.picks) > _MAX_ENTRIES:
        raise CodecError("too many entries for one batch")
    flags = (_FULL if batch.full else 0) | (_GOODBYE if batch.goodbye else 0)
    parts = [MAGIC, _U8.pack(flags), _name(batch.replica)]
    parts.append(_U16.pack(len(batch.counts)))
    for address, count in batch.counts.items():
        if not 0 <= count <= 0xFFFFFFFF:
            raise CodecError(f"count {count} out of range")
        parts += (_name(address), _U32.pack(count))
    parts.append(_U16.pack(len(batch.picks)))
    for pick in batch.picks:
        if len(pick.hashes) > MAX_HASHES:
            raise CodecError(f"{len(pick.hashes)} hashes in one pick (at most {MAX_HASHES})")
        hashes = array("Q", pick.hashes)
        if _SWAP:
            hashes.byteswap()
        parts += (_name(pick.key), _name(pick.address), _U16.pack(len(hashes)), hashes.tobytes())
    return b"".join(parts)


def decode(data: bytes) -> Batch:
    """The batch in ``data``; raises :class:`CodecError` unless it is well formed."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise CodecError(f"{len(data)} bytes (at most {MAX_MESSAGE_BYTES})")
    if data[:4] != MAGIC:
        raise CodecError("not a batch (bad magic)")
    reader = _Reader(memoryview(data), 4)
    flags = reader.u8()
    replica = reader.name()
    counts: dict[str, int] = {}
    for _ in range(reader.u16()):
        address = reader.name()
        counts[address] = reader.u32()
    picks: list[Pick] = []
    for _ in range(reader.u16()):
        key = reader.name()
        address = reader.name()
        n = reader.u16()
        if n > MAX_HASHES:
            raise CodecError(f"{n} hashes in one pick (at most {MAX_HASHES})")
        hashes = array("Q")
        hashes.frombytes(reader.take(8 * n))
        if _SWAP:
            hashes.byteswap()
        picks.append(Pick(key, address, hashes.tolist()))
    if reader.left():
        raise CodecError(f"{reader.left()} bytes after the batch")
    return Batch(
        replica, counts, tuple(picks), full=bool(flags & _FULL), goodbye=bool(flags & _GOODBYE)
    )


def _name(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise CodecError(f"name over 255 bytes: {text[:40]!r}...")
    return _U8.pack(len(raw)) + raw


class _Reader:
    __slots__ = ("_at", "_data")

    def __init__(self, data: memoryview, at: int) -> None:
        self._data = data
        self._at = at

    def left(self) -> int:
        return len(self._data) - self._at

    def take(self, n: int) -> memoryview:
        if n > self.left():
            raise CodecError("truncated batch")
        start = self._at
        self._at += n
        return self._data[start : self._at]

    def u8(self) -> int:
        value: int = _U8.unpack(self.take(1))[0]
        return value

    def u16(self) -> int:
        value: int = _U16.unpack(self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def name(self) -> str:
        raw = self.take(self.u8())
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as exc:
            raise CodecError("a name is not UTF-8") from exc
