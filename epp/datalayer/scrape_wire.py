"""The messages between epp and its scraper process (:mod:`~epp.datalayer.scrape_worker`),
as bytes on a local stream socket.

A frame is a 4-byte little-endian length, then that many bytes: a kind byte and the
kind's body. Both sides are epp's own code, but the child handles what pods send, so the
parent reads its frames as it would any input: a length over ``MAX_FRAME_BYTES``, an
unknown kind or a body that does not add up is a :class:`WireError`, and the parent then
treats the child as broken (kills and restarts it).

An endpoint crosses as a fixed-size record (``STATE``) with the whole of what the
scraper keeps on it: metrics, consecutive failures, total failures and the last error
text (its length in the record, its bytes after the records). The parent sends it when
it adds an endpoint (so a restarted child goes on with the back-off and the "log only
when the error changes" of the one before it), the child after every scrape. Whole
states, never increments: a frame that the parent applies late, or twice, cannot make a
count wrong, and the parent's copy is exactly the child's after each frame.

``STATE`` packs 74 bytes (LoRA adapter and model names follow the records, only for
endpoints that report some); ``struct.iter_unpack`` reads a frame of them in C, so the
parent spends about a microsecond per scrape on it (the scrape itself costs ~90 µs).
The name sets repeat from scrape to scrape (every pod of a pool names the same model),
so the reader decodes each distinct blob once (:func:`_names_of`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from epp.datalayer.endpoint import Endpoint

__all__ = [
    "ADD",
    "INFLIGHT",
    "LOG",
    "MAX_FRAME_BYTES",
    "MAX_LOG_CHARS",
    "REMOVE",
    "START",
    "STARTED",
    "STATES",
    "STATS",
    "STOP",
    "EndpointState",
    "FrameBuffer",
    "WireError",
    "decode_add",
    "decode_ids",
    "decode_log",
    "decode_states",
    "decode_stats",
    "encode_add",
    "encode_endpoints",
    "encode_ids",
    "encode_log",
    "encode_states",
    "encode_stats",
    "frame",
    "state_of",
    "unpack_states",
]

# Kinds. Parent -> child:
ADD = 1  # endpoints to scrape: states and addresses
REMOVE = 2  # ids no longer to scrape
INFLIGHT = 3  # the ids that have requests from epp in flight (all others have none)
START = 4  # the first ADD is in: scrape everything once, then keep polling
STOP = 5  # stop polling, close connections, exit
# Child -> parent:
STATES = 6  # endpoint states after scrapes
STARTED = 7  # start()'s first round of scrapes is done (its STATES came before)
STATS = 8  # polls started so far (also a heartbeat)
LOG = 9  # a log record for the parent's handlers

_HEAD = struct.Struct("<IB")  # frame length (kind byte + body), kind
_COUNT = struct.Struct("<I")
_STATS = struct.Struct("<Q")
_LOG_HEAD = struct.Struct("<HHI")  # level, logger name bytes, message bytes
# id, failures in a row, failures in total, waiting, running, KV use, block size (-1:
# None), blocks (-1: None), updated_at, length of the error text in UTF-8 (0: None),
# max_lora (-1: None), length of the names blob (0: no LoRA adapters and no model names).
_STATE = struct.Struct("<IIIqqdqqdHqI")
# The names blob: three lists (LoRA adapters running, waiting, the model names the
# series carry), each a count, then per name its UTF-8 length and bytes.
_NAMES_COUNT = struct.Struct("<H")
_NAME_LENGTH = struct.Struct("<H")
_ADDRESS = struct.Struct("<H")

# A frame holds at most this many bytes: 16 MiB is ~250,000 endpoint states; senders
# split long lists well below it.
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_LOG_CHARS = 4000  # a log message crossing over is cut to this
_MAX_TEXT_BYTES = 0xFFFF
_NONE = -1


class WireError(ValueError):
    """Bytes that are not a frame this module writes."""


class EndpointState(NamedTuple):
    """What the scraper keeps on one endpoint, as it crosses the socket."""

    id: int
    scrape_failures: int
    scrape_errors_total: int
    waiting_requests: int
    running_requests: int
    kv_cache_usage: float
    kv_block_size: int | None
    kv_num_blocks: int | None
    updated_at: float
    last_scrape_error: str | None
    max_lora: int | None = None
    lora_running: frozenset[str] = frozenset()
    lora_waiting: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()


Names = tuple[frozenset[str], frozenset[str], frozenset[str]]
_NO_NAMES: Names = (frozenset(), frozenset(), frozenset())


def _encode_names(
    running: frozenset[str], waiting: frozenset[str], models: frozenset[str]
) -> bytes:
    if not (running or waiting or models):
        return b""
    parts = []
    for names in (running, waiting, models):
        encoded = [n.encode()[:_MAX_TEXT_BYTES] for n in sorted(names)][:0xFFFF]
        parts.append(_NAMES_COUNT.pack(len(encoded)))
        parts.extend(_NAME_LENGTH.pack(len(e)) + e for e in encoded)
    return b"".join(parts)


# Decoded name blobs by their bytes, so that a frame of pods naming the same model (and
# adapters) builds no sets. Blobs over _CACHED_BLOB_BYTES are decoded every time and the
# cache is emptied when full: at most about 4 MiB, whatever the child sends.
_CACHED_BLOB_BYTES = 4096
_CACHED_BLOBS = 1024
_names_cache: dict[bytes, Names] = {}


def _names_of(blob: bytes) -> Names:
    names = _names_cache.get(blob)
    if names is None:
        names = _decode_names(blob)
        if len(blob) <= _CACHED_BLOB_BYTES:
            if len(_names_cache) >= _CACHED_BLOBS:
                _names_cache.clear()
            _names_cache[blob] = names
    return names


def _decode_names(blob: bytes) -> Names:
    at = 0
    out: list[frozenset[str]] = []
    try:
        for _ in range(3):
            (count,) = _NAMES_COUNT.unpack_from(blob, at)
            at += _NAMES_COUNT.size
            names = []
            for _ in range(count):
                (length,) = _NAME_LENGTH.unpack_from(blob, at)
                at += _NAME_LENGTH.size
                if at + length > len(blob):
                    raise WireError("a name runs past its blob")
                names.append(blob[at : at + length].decode(errors="replace"))
                at += length
            out.append(frozenset(names))
    except struct.error as exc:
        raise WireError(f"bad names: {exc}") from exc
    if at != len(blob):
        raise WireError(f"{len(blob) - at} bytes after the names")
    return out[0], out[1], out[2]


def state_of(id_: int, endpoint: Endpoint) -> EndpointState:
    """What ``endpoint`` holds now, as endpoint ``id_``."""
    m = endpoint.metrics
    return EndpointState(
        id_,
        endpoint.scrape_failures,
        endpoint.scrape_errors_total,
        m.waiting_requests,
        m.running_requests,
        m.kv_cache_usage,
        m.kv_block_size,
        m.kv_num_blocks,
        m.updated_at,
        endpoint.last_scrape_error,
        m.max_lora,
        m.lora_running,
        m.lora_waiting,
        m.models,
    )


def frame(kind: int, body: bytes = b"") -> bytes:
    return _HEAD.pack(len(body) + 1, kind) + body


def encode_states(states: Sequence[EndpointState]) -> bytes:
    """The body of a STATES frame (and the first part of an ADD frame's)."""
    return _encode(
        (
            s.id,
            s.scrape_failures,
            s.scrape_errors_total,
            s.waiting_requests,
            s.running_requests,
            s.kv_cache_usage,
            s.kv_block_size,
            s.kv_num_blocks,
            s.updated_at,
            s.last_scrape_error,
            s.max_lora,
            _encode_names(s.lora_running, s.lora_waiting, s.models),
        )
        for s in states
    )


def _encode(rows: Iterable[tuple[Any, ...]]) -> bytes:
    """Records from rows of :class:`EndpointState`'s fields (the names as their blob),
    then the error texts, then the name blobs, in the records' order."""
    pack = _STATE.pack
    records: list[bytes] = []
    texts: list[bytes] = []
    blobs: list[bytes] = []
    for row in rows:
        (id_, failures, errors, waiting, running, kv, block, blocks, at, error, lora, blob) = row
        text = error.encode()[:_MAX_TEXT_BYTES] if error else b""
        if text:
            texts.append(text)
        if blob:
            blobs.append(blob)
        records.append(
            pack(
                id_,
                failures,
                errors,
                waiting,
                running,
                kv,
                _NONE if block is None else block,
                _NONE if blocks is None else blocks,
                at,
                len(text),
                _NONE if lora is None else lora,
                len(blob),
            )
        )
    return b"".join((_COUNT.pack(len(records)), *records, *texts, *blobs))


def unpack_states(
    body: bytes, offset: int = 0
) -> tuple[list[tuple[Any, ...]], list[str | None], list[Names], int]:
    """The raw records of a STATES body from ``offset`` (the fields of
    :class:`EndpointState` up to the error text in order, ``-1`` for a None block count,
    the text length, max_lora and the names blob's length), their error texts, their
    names (LoRA running, waiting, models), and where they end. For the reader that
    applies them at once: no object per state beyond the record tuple."""
    try:
        (count,) = _COUNT.unpack_from(body, offset)
    except struct.error as exc:
        raise WireError(f"bad states: {exc}") from exc
    start = offset + _COUNT.size
    end = start + count * _STATE.size
    if end > len(body):
        raise WireError(f"{count} states do not fit in {len(body)} bytes")
    raws = list(_STATE.iter_unpack(memoryview(body)[start:end]))
    texts: list[str | None] = [None] * count
    at = end
    for k, raw in enumerate(raws):
        length = raw[9]
        if length:
            if at + length > len(body):
                raise WireError("error texts run past the frame")
            texts[k] = body[at : at + length].decode(errors="replace")
            at += length
    names: list[Names] = [_NO_NAMES] * count
    for k, raw in enumerate(raws):
        length = raw[11]
        if length:
            if at + length > len(body):
                raise WireError("names run past the frame")
            names[k] = _names_of(body[at : at + length])
            at += length
    return raws, texts, names, at


def encode_endpoints(items: Sequence[tuple[int, Endpoint]]) -> bytes:
    """The body of a STATES frame straight from endpoints: what the scraper process
    sends after its scrapes (the same bytes as ``encode_states`` of their
    :func:`state_of`, without the objects in between)."""
    return _encode(
        (
            id_,
            ep.scrape_failures,
            ep.scrape_errors_total,
            (m := ep.metrics).waiting_requests,
            m.running_requests,
            m.kv_cache_usage,
            m.kv_block_size,
            m.kv_num_blocks,
            m.updated_at,
            ep.last_scrape_error,
            m.max_lora,
            _encode_names(m.lora_running, m.lora_waiting, m.models),
        )
        for id_, ep in items
    )


def decode_states(body: bytes, offset: int = 0) -> tuple[list[EndpointState], int]:
    """The states of a STATES body from ``offset``, and where they end."""
    raws, texts, names, end = unpack_states(body, offset)
    states = [
        EndpointState(
            raw[0],
            raw[1],
            raw[2],
            raw[3],
            raw[4],
            raw[5],
            None if raw[6] == _NONE else raw[6],
            None if raw[7] == _NONE else raw[7],
            raw[8],
            text,
            None if raw[10] == _NONE else raw[10],
            *named,
        )
        for raw, text, named in zip(raws, texts, names, strict=True)
    ]
    return states, end


def encode_add(endpoints: Sequence[tuple[EndpointState, str]]) -> bytes:
    """The body of an ADD frame: each endpoint's state and address."""
    addresses = [address.encode()[:_MAX_TEXT_BYTES] for _, address in endpoints]
    tail = b"".join(_ADDRESS.pack(len(a)) + a for a in addresses)
    return encode_states([state for state, _ in endpoints]) + tail


def decode_add(body: bytes) -> list[tuple[EndpointState, str]]:
    states, at = decode_states(body)
    out = []
    try:
        for state in states:
            (length,) = _ADDRESS.unpack_from(body, at)
            at += _ADDRESS.size
            if at + length > len(body):
                raise WireError("an address runs past the frame")
            out.append((state, body[at : at + length].decode(errors="replace")))
            at += length
    except struct.error as exc:
        raise WireError(f"bad addresses: {exc}") from exc
    if at != len(body):
        raise WireError(f"{len(body) - at} bytes after the addresses")
    return out


def encode_ids(ids: Sequence[int]) -> bytes:
    """The body of a REMOVE or INFLIGHT frame."""
    return _COUNT.pack(len(ids)) + struct.pack(f"<{len(ids)}I", *ids)


def decode_ids(body: bytes) -> list[int]:
    try:
        (count,) = _COUNT.unpack_from(body)
        if _COUNT.size + 4 * count != len(body):
            raise WireError(f"{count} ids in {len(body)} bytes")
        return list(struct.unpack_from(f"<{count}I", body, _COUNT.size))
    except struct.error as exc:
        raise WireError(f"bad ids: {exc}") from exc


def encode_stats(polls_total: int) -> bytes:
    return _STATS.pack(polls_total)


def decode_stats(body: bytes) -> int:
    try:
        (polls,) = _STATS.unpack(body)
    except struct.error as exc:
        raise WireError(f"bad stats: {exc}") from exc
    return int(polls)


def encode_log(level: int, logger: str, message: str) -> bytes:
    if len(message) > MAX_LOG_CHARS:
        message = message[:MAX_LOG_CHARS] + "..."
    name, text = logger.encode()[:200], message.encode()
    return _LOG_HEAD.pack(max(0, min(level, 0xFFFF)), len(name), len(text)) + name + text


def decode_log(body: bytes) -> tuple[int, str, str]:
    try:
        level, name_len, text_len = _LOG_HEAD.unpack_from(body)
    except struct.error as exc:
        raise WireError(f"bad log record: {exc}") from exc
    at = _LOG_HEAD.size
    if at + name_len + text_len != len(body):
        raise WireError("a log record of the wrong length")
    name = body[at : at + name_len].decode(errors="replace")
    text = body[at + name_len :].decode(errors="replace")
    return level, name, text


class FrameBuffer:
    """Bytes from the socket in, whole frames out."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._at = 0
        self._max = max_frame_bytes

    def feed(self, data: bytes) -> None:
        if self._at:
            # Drop what was read already, once per feed rather than per frame.
            del self._buffer[: self._at]
            self._at = 0
        self._buffer += data

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer) - self._at

    def next(self) -> tuple[int, bytes] | None:
        """The next whole frame (kind, body), or None until more bytes come."""
        buffer, at = self._buffer, self._at
        if len(buffer) - at < _HEAD.size:
            return None
        length, kind = _HEAD.unpack_from(buffer, at)
        if length < 1 or length > self._max:
            raise WireError(f"a frame of {length} bytes (limit {self._max})")
        end = at + 4 + length
        if end > len(buffer):
            return None
        body = bytes(buffer[at + _HEAD.size : end])
        self._at = end
        return kind, body

    def frames(self) -> Iterator[tuple[int, bytes]]:
        while (item := self.next()) is not None:
            yield item
