"""A small HTTP/1.1 keep-alive GET client on asyncio Protocols, for the metrics scraper.

Why not aiohttp: a poll of a pod's ``/metrics`` through ``aiohttp.ClientSession`` cost
about 470 µs of CPU (``benchmarks/bench_scrape_fleet.py``), nearly all in building the
request and response objects, the connector and the stream reader; at 256 pods polled
every 50 ms that is more than two cores. A poll here is one ``transport.write`` of bytes
built once per pod, one ``data_received`` with the whole answer in the common case, the
I/O-free :class:`~epp.datalayer.http1_response.ResponseReader`, and one callback, and
costs a small fraction of that (the benchmark shows by how much). :meth:`Http1Client.get`
wraps that callback in a future for a caller that awaits; the scraper's steady polls use
:meth:`Http1Client.start_get`, which takes an idle connection and calls back from
``data_received`` with no task, future or extra loop iteration in between.

What it does, and no more: plain HTTP (the scraper has no TLS to pods), one request at
a time per connection, idle connections kept per address (at most
``max_idle_per_address``, each closed after ``keepalive_s`` unused: under uvicorn's 5 s,
so a connection the server is about to close is not reused), one retry on a fresh
connection when a *reused* one turns out closed before any byte of the answer arrived
(the server's idle close racing our write; a GET is safe to repeat), and a deadline on
the whole call, connect included. A connection whose answer timed out, was malformed or
was cancelled is closed, never reused: its next bytes could be the late answer to the
old poll. Deadlines of requests under way are checked by one timer every
:data:`DEADLINE_SWEEP_S` for all of them, so a timeout fires up to that much late: a
timer armed and cancelled per request cost about a fifth of a poll's CPU at 256 pods
(``benchmarks/bench_scrape_fleet.py``).

Example::

    client = Http1Client(max_body_bytes=4 * 1024 * 1024)
    status, reason, body = await client.get("10.0.0.7:8000", "/metrics", timeout_s=0.5)
    await client.aclose()
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import NamedTuple, cast

from epp.datalayer.errors import ScrapeError
from epp.datalayer.http1_response import ResponseReader

__all__ = ["ConnectionDropped", "Http1Client", "Response", "ResponseCallback", "split_address"]

# Under uvicorn's 5 s keep-alive (vLLM, SGLang): see the module docstring.
DEFAULT_KEEPALIVE_S = 4.0
# The polling task, plus an occasional scrape_once of the same pod.
DEFAULT_MAX_IDLE_PER_ADDRESS = 2
# How often the deadlines of requests under way are checked (how late a timeout can be).
DEADLINE_SWEEP_S = 0.05


class Response(NamedTuple):
    status: int
    reason: str
    body: bytes


class ConnectionDropped(ScrapeError):
    """A connection closed before any byte of the answer arrived (a GET may be retried
    on a fresh connection)."""


_Dropped = ConnectionDropped
_NEVER = float("inf")
# Called once per request: with the reader holding the whole response, or with the error.
_Done = Callable[[ResponseReader | None, BaseException | None], None]
# What start_get calls back with: the response, or the error (TimeoutError, ScrapeError).
ResponseCallback = Callable[[Response | None, BaseException | None], None]


class _Connection(asyncio.Protocol):
    """One TCP connection to one pod; carries one request at a time."""

    __slots__ = ("_done", "_reader", "closed", "deadline", "idle_since", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.deadline = _NEVER  # loop.time() by which the request under way must end
        self._reader: ResponseReader | None = None
        self._done: _Done | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport has Transport's methods but is not its subclass.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            self.close()  # bytes nobody asked for: the server is not speaking HTTP to us
            return
        try:
            done = reader.feed(data)
        except ScrapeError as exc:
            self._fail(exc)
            return
        if done:
            self._succeed(reader)

    def eof_received(self) -> bool:
        reader = self._reader
        if reader is not None:
            try:
                done = reader.feed_eof()
            except ScrapeError as exc:
                self._fail(_Dropped(str(exc)) if not reader.started else exc)
                return False
            if done:
                reader.keep_alive = False
                self._succeed(reader)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reader = self._reader
        if reader is not None:
            if exc is not None:
                error: ScrapeError = ScrapeError(f"{type(exc).__name__}: {exc}")
                self._fail(_Dropped(str(error)) if not reader.started else error)
            else:
                self.eof_received()

    # -- one request -----------------------------------------------------------------

    def request(self, data: bytes, reader: ResponseReader, deadline: float, done: _Done) -> None:
        """Send ``data``; ``done(reader, None)`` once ``reader`` holds the whole response,
        or ``done(None, error)``. Called exactly once, unless :meth:`abandon` comes first.
        The client's deadline sweep calls :meth:`time_out` once ``deadline`` is past."""
        assert self.transport is not None and self._reader is None
        self._reader = reader
        self._done = done
        self.deadline = deadline
        self.transport.write(data)

    def time_out(self) -> None:
        self._fail(TimeoutError())

    def _succeed(self, reader: ResponseReader) -> None:
        done = self._finish()
        if not reader.keep_alive:
            self.close()
        if done is not None:
            done(reader, None)

    def _fail(self, exc: BaseException) -> None:
        done = self._finish()
        self.close()
        if done is not None:
            done(None, exc)

    def _finish(self) -> _Done | None:
        done, self._done, self._reader = self._done, None, None
        self.deadline = _NEVER
        return done

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            # abort(): do not wait to flush anything to a pod we gave up on.
            self.transport.abort()

    def abandon(self) -> None:
        """The caller stopped waiting (cancelled): the state of the exchange is unknown."""
        self._finish()
        self.close()


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (IPv6 in brackets) -> ``(host, port)``; raises ScrapeError."""
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ScrapeError(f"not a host:port address: {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class Http1Client:
    """GET over HTTP/1.1 with keep-alive connections per address; see the module
    docstring. Use from one event loop; :meth:`aclose` closes every connection."""

    def __init__(
        self,
        *,
        max_body_bytes: int | None,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        max_idle_per_address: int = DEFAULT_MAX_IDLE_PER_ADDRESS,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._max_body = max_body_bytes
        self._keepalive_s = keepalive_s
        self._max_idle = max_idle_per_address
        self._extra_headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._idle: dict[str, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None  # the deadline check, while busy
        self._requests: dict[tuple[str, str], bytes] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def get(
        self, address: str, target: str, *, timeout_s: float, reuse: bool = True
    ) -> Response:
        """GET ``target`` (path and query, already encoded) from ``address``.

        ``reuse=False`` dials a fresh connection (the retry after :meth:`start_get`
        reported :class:`ConnectionDropped`). Raises :class:`ScrapeError` for every
        failure the pod can cause (connect, protocol, limits) and ``TimeoutError`` when
        ``timeout_s`` runs out.
        """
        if self._closed:
            raise ScrapeError("client is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        data = self._requests.get((address, target))
        if data is None:
            data = self._request_bytes(address, target)
        connection = self._idle_connection(address, loop.time()) if reuse else None
        if connection is not None:
            try:
                return await self._exchange(loop, connection, address, data, deadline)
            except _Dropped:
                pass  # closed by the server while idle: once more on a fresh connection
        connection = await self._connect(loop, address, deadline)
        try:
            return await self._exchange(loop, connection, address, data, deadline)
        except _Dropped as exc:
            raise ScrapeError(str(exc)) from None

    def start_get(
        self, address: str, target: str, timeout_s: float, callback: ResponseCallback
    ) -> bool:
        """Send a GET on an idle keep-alive connection to ``address``, if there is one,
        and return True; ``callback(response, None)`` or ``callback(None, error)`` follows
        from the loop (never from inside this call). The error is ``TimeoutError``, a
        :class:`ConnectionDropped` (the reused connection was closed before the answer:
        retry with ``get(..., reuse=False)``) or another :class:`ScrapeError`.

        Returns False, and sends nothing, when no idle connection is at hand (use
        :meth:`get`, which dials). A client that is closed meanwhile calls back nothing.
        """
        if self._closed:
            return False
        loop = asyncio.get_running_loop()
        now = loop.time()
        connection = self._idle_connection(address, now)
        if connection is None:
            return False
        data = self._requests.get((address, target))
        if data is None:
            data = self._request_bytes(address, target)
        reader = ResponseReader(self._max_body)
        busy = self._busy
        busy.add(connection)
        if self._sweep is None:
            self._sweep = loop.call_later(DEADLINE_SWEEP_S, self._sweep_deadlines, loop)

        def done(finished: ResponseReader | None, error: BaseException | None) -> None:
            busy.discard(connection)
            if finished is None:
                callback(None, error)
                return
            if not connection.closed and not self._closed:
                self._release(address, connection, loop.time())
            callback(Response(finished.status, finished.reason, finished.body), None)

        connection.request(data, reader, now + timeout_s, done)
        return True

    def _sweep_deadlines(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the requests whose deadline passed; again in a while if any is left."""
        self._sweep = None
        now = loop.time()
        for connection in [c for c in self._busy if c.deadline <= now]:
            connection.time_out()
        if self._busy and not self._closed:
            self._sweep = loop.call_later(DEADLINE_SWEEP_S, self._sweep_deadlines, loop)

    async def _exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        connection: _Connection,
        address: str,
        data: bytes,
        deadline: float,
    ) -> Response:
        reader = ResponseReader(self._max_body)
        waiter: asyncio.Future[None] = loop.create_future()

        def done(_finished: ResponseReader | None, error: BaseException | None) -> None:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

        self._busy.add(connection)
        if self._sweep is None:
            self._sweep = loop.call_later(DEADLINE_SWEEP_S, self._sweep_deadlines, loop)
        try:
            connection.request(data, reader, deadline, done)
            await waiter
        except BaseException:
            connection.abandon()  # no-op unless cancelled mid-exchange
            raise
        finally:
            self._busy.discard(connection)
        if not connection.closed and not self._closed:
            self._release(address, connection, loop.time())
        return Response(reader.status, reader.reason, reader.body)

    def _request_bytes(self, address: str, target: str) -> bytes:
        if len(self._requests) >= 4096:
            self._requests.clear()  # addresses come and go; keep the cache bounded
        data = (f"GET {target} HTTP/1.1\r\nHost: {address}\r\n{self._extra_headers}\r\n").encode(
            "ascii"
        )
        self._requests[(address, target)] = data
        return data

    def _idle_connection(self, address: str, now: float) -> _Connection | None:
        idle = self._idle.get(address)
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self._keepalive_s:
                return connection
            connection.close()
        return None

    def _release(self, address: str, connection: _Connection, now: float) -> None:
        idle = self._idle.setdefault(address, [])
        if len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = now
        idle.append(connection)

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, address: str, deadline: float
    ) -> _Connection:
        host, port = split_address(address)
        try:
            async with asyncio.timeout_at(deadline):
                _, connection = await loop.create_connection(
                    _Connection, host, port, family=socket.AF_UNSPEC
                )
        except OSError as exc:
            raise ScrapeError(f"connect: {type(exc).__name__}: {exc}") from exc
        return connection

    def forget(self, address: str) -> None:
        """Close the idle connections to ``address`` (it left the endpoint table)."""
        for connection in self._idle.pop(address, []):
            connection.close()
        for key in [key for key in self._requests if key[0] == address]:
            del self._requests[key]

    async def aclose(self) -> None:
        """Close every connection; later calls to :meth:`get` fail."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        for connection in list(self._busy):
            connection.abandon()
        self._busy.clear()
        self._requests.clear()
