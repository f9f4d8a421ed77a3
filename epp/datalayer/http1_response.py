"""Read one HTTP/1.1 response to a GET, without I/O: bytes in, a finished response out.

The scraper's client (:mod:`epp.datalayer.http1_client`) feeds whatever the socket gave
it to :meth:`ResponseReader.feed` until it returns True, or tells it the connection
ended with :meth:`ResponseReader.feed_eof`. Keeping the parsing apart from the socket
lets the tests drive every byte sequence a broken or hostile pod could send.

What a model server's ``/metrics`` answer needs, and no more (RFC 9112):

- a status line ``HTTP/1.0`` or ``HTTP/1.1``; interim ``1xx`` heads are skipped
  (``101`` is refused: a GET must not switch protocols);
- a body framed by ``Content-Length``, by ``Transfer-Encoding: chunked`` (which wins over
  a ``Content-Length`` sent with it, and then the connection is not reused), or by the
  end of the connection; none for ``204`` and ``304``;
- keep-alive unless ``Connection: close``, HTTP/1.0 without ``keep-alive``, a body ended
  by the close, or bytes after the body (a server that answers what it was not asked is
  not trusted with the next poll).

Bounds, because the pod may be hostile: the head (status line, headers, and the chunked
trailers) may hold ``MAX_HEAD_BYTES``; the body ``max_body_bytes``, checked against a
declared ``Content-Length`` or chunk size *before* its bytes arrive; a chunk-size line
``MAX_CHUNK_LINE_BYTES``. Anything the scraper did not ask for (a ``Content-Encoding``
other than identity, a transfer coding other than chunked) is an error, not a guess.
"""

from __future__ import annotations

import enum
import re

from epp.datalayer.errors import ScrapeError

__all__ = ["MAX_CHUNKS", "MAX_CHUNK_LINE_BYTES", "MAX_HEAD_BYTES", "ResponseReader"]

# uvicorn and aiohttp refuse request heads over 8-64 KiB; a metrics answer's head is
# about 250 bytes. The same bound covers the trailers of a chunked body.
MAX_HEAD_BYTES = 64 * 1024
# "<hex size>[;extensions]\r\n": 16 hex digits cover any size; extensions are ignored
# but bounded.
MAX_CHUNK_LINE_BYTES = 1024
# Each chunk costs a few µs of Python: 4 MiB of one-byte chunks would hold the event
# loop for seconds. Servers write chunks of KBs (aiohttp: one per write()).
MAX_CHUNKS = 10_000

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([^\r\n]*))?")
# The header fields the reader acts on, as they start a line of the lower-cased head;
# the others are not looked at beyond their framing (see _header_fields).
_WANTED_FIELDS = (
    b"\ncontent-length:",
    b"\ntransfer-encoding:",
    b"\nconnection:",
    b"\ncontent-encoding:",
)
# Heads read before, by their bytes (without the final empty line): a pod answers every
# poll with the same head but for Content-Length, so a fleet sends a few dozen distinct
# heads, and reading one again costs a dict lookup instead of about 8 µs. Only heads that
# were accepted are kept (the checks that depend on the body run again each time), each
# at most a few hundred bytes, and the table is emptied when full.
_KNOWN_HEADS: dict[bytes, tuple[int, bytes, bool, dict[bytes, bytes]]] = {}
_MAX_KNOWN_HEADS = 1024
_MAX_KNOWN_HEAD_BYTES = 1024
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(rb"[0-9]{1,18}")


class _State(enum.Enum):
    HEAD = "head"  # status line and headers, until an empty line
    LENGTH = "length"  # Content-Length bytes
    CHUNK_SIZE = "chunk size"  # a chunk-size line
    CHUNK_DATA = "chunk data"  # the bytes of one chunk, then CRLF
    TRAILERS = "trailers"  # header lines after the last chunk, until an empty line
    UNTIL_CLOSE = "until close"  # a body without framing: everything until EOF
    DONE = "done"


class ResponseReader:
    """The state of one response being read; make a new one per request.

    After :meth:`feed` (or :meth:`feed_eof`) returned True, ``status``, ``reason`` and
    ``body`` hold the response and ``keep_alive`` says whether the connection may carry
    the next request. Every malformed or oversized input raises :class:`ScrapeError`
    whose text says what was wrong (without the URL; the caller adds it).
    """

    __slots__ = (
        "_body",
        "_body_size",
        "_buffer",
        "_chunk_left",
        "_chunks",
        "_length_left",
        "_max_body",
        "_reason",
        "_state",
        "body",
        "keep_alive",
        "status",
    )

    def __init__(self, max_body_bytes: int | None) -> None:
        self._max_body = max_body_bytes
        self._state = _State.HEAD
        self._buffer = b""  # bytes received but not yet consumed
        self._body: list[bytes] = []
        self._body_size = 0
        self._length_left = 0
        self._chunk_left = 0
        self._chunks = 0
        self._reason = b""
        self.status = 0
        self.body = b""
        self.keep_alive = False

    @property
    def reason(self) -> str:
        """The status line's reason phrase, printable (it comes from the pod)."""
        text = self._reason[:80].decode("latin-1")
        return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def started(self) -> bool:
        """Whether any byte of the response arrived (a reused connection the server had
        already closed fails before this; only then is a retry safe)."""
        return bool(self._buffer) or self._state is not _State.HEAD

    def feed(self, data: bytes) -> bool:
        """Take the next bytes from the connection; True once the response is complete."""
        if self._state is _State.DONE:
            if data:
                self.keep_alive = False  # an answer to nothing: do not reuse
            return True
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        # The common case, a whole small response in one read, goes through each step
        # once; a response split across reads resumes where it stopped.
        pos = 0
        while True:
            state = self._state
            if state is _State.HEAD:
                new_pos = self._read_head(buffer, pos)
            elif state is _State.LENGTH:
                new_pos = self._read_length(buffer, pos)
            elif state is _State.CHUNK_SIZE:
                new_pos = self._read_chunk_size(buffer, pos)
            elif state is _State.CHUNK_DATA:
                new_pos = self._read_chunk_data(buffer, pos)
            elif state is _State.TRAILERS:
                new_pos = self._read_trailers(buffer, pos)
            else:  # UNTIL_CLOSE
                self._append_body(buffer[pos:] if pos else buffer)
                return False
            if self.done:  # (a property: mypy narrowed self._state above)
                if new_pos < len(buffer):
                    self.keep_alive = False  # bytes after the body: do not reuse
                return True
            if self._state is state and new_pos == pos:  # needs more bytes than it has
                self._buffer = buffer[pos:] if pos else buffer
                return False
            pos = new_pos

    def feed_eof(self) -> bool:
        """The server closed the connection; True if that completed the response."""
        if self._state is _State.UNTIL_CLOSE:
            self._finish()
            return True
        if self._state is _State.DONE:
            return True
        if self._state is _State.HEAD and not self._buffer:
            raise ScrapeError("connection closed before a response")
        if self._state is _State.LENGTH:
            got = self._body_size
            raise ScrapeError(
                f"connection closed after {got} of {got + self._length_left} body bytes"
            )
        raise ScrapeError(f"connection closed in the response's {self._state.value}")

    # -- the head ------------------------------------------------------------------

    def _read_head(self, buffer: bytes, pos: int) -> int:
        end = buffer.find(b"\r\n\r\n", pos)
        if end < 0:
            if len(buffer) - pos > MAX_HEAD_BYTES:
                raise ScrapeError(f"response head over {MAX_HEAD_BYTES} bytes")
            return pos
        if end - pos > MAX_HEAD_BYTES:
            raise ScrapeError(f"response head over {MAX_HEAD_BYTES} bytes")
        head = buffer[pos:end]
        known = _KNOWN_HEADS.get(head)
        if known is not None:
            self.status, self._reason, self.keep_alive, fields = known
            self._start_body(fields)
            return end + 4
        line_end = buffer.find(b"\r\n", pos, end + 2)
        status_line = _STATUS_LINE.fullmatch(buffer, pos, line_end)
        if status_line is None:
            raise ScrapeError(f"not an HTTP/1.x status line: {_show(buffer[pos:line_end])}")
        minor, code, reason = status_line.groups()
        status = int(code)
        if status == 101:
            raise ScrapeError("HTTP 101: the server switched protocols")
        if status < 200:
            return end + 4  # an interim response: the real one follows
        self.status = status
        self._reason = reason or b""
        fields = _header_fields(buffer, line_end + 2, end + 2)
        connection = fields.get(b"connection:", b"").lower()
        if minor == b"1":
            self.keep_alive = b"close" not in _tokens(connection)
        else:
            self.keep_alive = b"keep-alive" in _tokens(connection)
        encoding = fields.get(b"content-encoding:", b"identity").strip().lower()
        if encoding not in (b"identity", b""):
            # It was asked for identity (see the scraper); decoding would be a second
            # unbounded step.
            raise ScrapeError(f"unsupported Content-Encoding {_show(encoding)}")
        keep_alive = self.keep_alive
        self._start_body(fields)
        if len(head) <= _MAX_KNOWN_HEAD_BYTES:
            if len(_KNOWN_HEADS) >= _MAX_KNOWN_HEADS:
                _KNOWN_HEADS.clear()
            _KNOWN_HEADS[head] = (status, self._reason, keep_alive, fields)
        return end + 4

    def _start_body(self, fields: dict[bytes, bytes]) -> None:
        transfer = fields.get(b"transfer-encoding:")
        length = fields.get(b"content-length:")
        if self.status in (204, 304):
            self._finish()
        elif transfer is not None:
            codings = [c.strip().lower() for c in transfer.split(b",")]
            if codings != [b"chunked"]:
                raise ScrapeError(f"unsupported Transfer-Encoding {_show(transfer)}")
            if length is not None:
                self.keep_alive = False  # both framings: RFC 9112 6.3 says close after
            self._state = _State.CHUNK_SIZE
        elif length is not None:
            self._length_left = _content_length(length)
            limit = self._max_body
            if limit is not None and self._length_left > limit:
                raise ScrapeError(f"body of {self._length_left} bytes is over the limit of {limit}")
            self._state = _State.LENGTH
            if self._length_left == 0:
                self._finish()
        else:
            self.keep_alive = False  # the end of the connection ends the body
            self._state = _State.UNTIL_CLOSE

    # -- the body ------------------------------------------------------------------

    def _read_length(self, buffer: bytes, pos: int) -> int:
        available = len(buffer) - pos
        if available == 0:
            return pos
        take = min(available, self._length_left)
        self._body.append(buffer[pos : pos + take] if pos or take < len(buffer) else buffer)
        self._body_size += take
        self._length_left -= take
        if self._length_left == 0:
            self._finish()
        return pos + take

    def _read_chunk_size(self, buffer: bytes, pos: int) -> int:
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            if len(buffer) - pos > MAX_CHUNK_LINE_BYTES:
                raise ScrapeError(f"chunk-size line over {MAX_CHUNK_LINE_BYTES} bytes")
            return pos
        if end - pos > MAX_CHUNK_LINE_BYTES:
            raise ScrapeError(f"chunk-size line over {MAX_CHUNK_LINE_BYTES} bytes")
        size_text = buffer[pos:end].split(b";", 1)[0].strip(b" \t")
        if _HEX.fullmatch(size_text) is None:
            raise ScrapeError(f"bad chunk size {_show(size_text)}")
        size = int(size_text, 16)
        if size == 0:
            self._state = _State.TRAILERS
        else:
            self._chunks += 1
            if self._chunks > MAX_CHUNKS:
                raise ScrapeError(f"more than {MAX_CHUNKS} chunks")
            self._check_body_room(size)
            self._body_size += size
            self._chunk_left = size
            self._state = _State.CHUNK_DATA
        return end + 2

    def _read_chunk_data(self, buffer: bytes, pos: int) -> int:
        if self._chunk_left > 0:
            take = min(len(buffer) - pos, self._chunk_left)
            if take > 0:
                self._body.append(buffer[pos : pos + take])
                self._chunk_left -= take
                pos += take
            if self._chunk_left > 0:
                return pos
        if len(buffer) - pos < 2:
            return pos
        if buffer[pos : pos + 2] != b"\r\n":
            raise ScrapeError("chunk data not followed by CRLF")
        self._state = _State.CHUNK_SIZE
        return pos + 2

    def _read_trailers(self, buffer: bytes, pos: int) -> int:
        # Usually none: the last chunk's line is followed by one empty line.
        if buffer.startswith(b"\r\n", pos):
            self._finish()
            return pos + 2
        end = buffer.find(b"\r\n\r\n", pos)
        if end < 0 or end - pos > MAX_HEAD_BYTES:
            if len(buffer) - pos > MAX_HEAD_BYTES:
                raise ScrapeError(f"chunked trailers over {MAX_HEAD_BYTES} bytes")
            return pos
        self._finish()
        return end + 4

    def _append_body(self, data: bytes) -> None:
        if data:
            self._check_body_room(len(data))
            self._body_size += len(data)
            self._body.append(data)

    def _check_body_room(self, size: int) -> None:
        limit = self._max_body
        if limit is not None and self._body_size + size > limit:
            raise ScrapeError(f"body is over the limit of {limit} bytes")

    def _finish(self) -> None:
        body = self._body
        self.body = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        self._state = _State.DONE


def _header_fields(buffer: bytes, start: int, end: int) -> dict[bytes, bytes]:
    """The values of the few fields the reader acts on, by lower-cased name with a colon,
    from the header lines in ``buffer[start:end]`` (each ending in CRLF).

    Repeated ``Content-Length`` must agree; repeated ``Transfer-Encoding`` and
    ``Connection`` join. Searching the lower-cased head for those names costs a few C
    calls; checking every line's grammar costs more than the rest of the answer, and a
    line the reader does not act on cannot change what it does, so the other lines are
    only checked for framing: CRLF endings, and no line folded onto the previous one
    (obs-fold, which RFC 9112 lets a client reject).
    """
    head = buffer[start - 2 : end].lower()  # from the CRLF before the first line
    lf = head.count(b"\n")
    if lf != head.count(b"\r\n") or lf != head.count(b"\r"):
        raise ScrapeError("header lines not ended by CRLF")
    if b"\n " in head or b"\n\t" in head:
        raise ScrapeError("a header line folded onto the previous one")
    fields: dict[bytes, bytes] = {}
    for name in _WANTED_FIELDS:
        at = head.find(name)
        while at >= 0:
            value_start = at + len(name)
            value = head[value_start : head.find(b"\r", value_start)].strip(b" \t")
            key = name[1:]
            previous = fields.get(key)
            if previous is None:
                fields[key] = value
            elif key == b"content-length:":
                if previous != value:
                    raise ScrapeError("conflicting Content-Length headers")
            else:
                fields[key] = previous + b", " + value
            at = head.find(name, value_start)
    return fields


def _content_length(value: bytes) -> int:
    # "1234", or a list of the same value ("1234, 1234") as RFC 9110 8.6 allows.
    values = {v.strip(b" \t") for v in value.split(b",")}
    if len(values) != 1:
        raise ScrapeError(f"bad Content-Length {_show(value)}")
    text = values.pop()
    if _DIGITS.fullmatch(text) is None:
        raise ScrapeError(f"bad Content-Length {_show(value)}")
    return int(text)


def _tokens(value: bytes) -> set[bytes]:
    return {token.strip(b" \t") for token in value.split(b",")}


def _show(data: bytes) -> str:
    """A short printable form of bytes from the pod, for an error text."""
    return repr(data[:80])[1:] + ("..." if len(data) > 80 else "")
