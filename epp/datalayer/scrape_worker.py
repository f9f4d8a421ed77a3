"""The scraper process: ``python -m epp.datalayer.scrape_worker FD CONFIG_JSON``.

epp starts it (:mod:`~epp.datalayer.scrape_process`) so that polling, reading and
parsing 256 pods' pages every 50 ms runs on the other core, not on the event loop that
answers Envoy. It runs the same :class:`~epp.datalayer.scraper.MetricsScraper` over a
mirror of epp's endpoint table, and talks to epp over the inherited socket ``FD`` in the
frames of :mod:`~epp.datalayer.scrape_wire`:

- ADD / REMOVE change the mirror (and so what is polled); INFLIGHT says which endpoints
  have requests from epp in flight (what the scraper's idle pace looks at, and the
  watcher's wake-up of an idle endpoint happens as it arrives); START begins scraping.
- After a scrape the endpoint's whole state is sent back, gathered for ``flush_s``
  (10 ms at the default interval, or until 64 are ready) so that epp wakes once
  per few dozen scrapes.
  An endpoint scraped twice before a flush is sent once, with its latest state, and
  while epp does not read (its socket buffer is full) nothing more is queued: the
  states wait in a set of at most one entry per endpoint.
- Log records go to epp's handlers as LOG frames, so the child needs no log set-up and
  its lines look like epp's own.
- A STATS frame with the polls so far follows every flush and comes at least once a
  second: epp takes a silent child for a hung one.

It exits when epp says STOP, when the socket closes, or when its parent process changes
(epp died): it never outlives the process that started it. SIGINT is ignored (a Ctrl-C
reaches the whole process group; epp decides when the scraper stops).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import socket
import sys
import traceback
from typing import Any, cast

from epp.datalayer import scrape_wire as wire
from epp.datalayer.endpoint import Endpoint, Metrics
from epp.datalayer.scraper import MetricsScraper
from epp.datalayer.store import EndpointStore

__all__ = ["HEARTBEAT_S", "main"]

HEARTBEAT_S = 1.0
# A flush is due once this many states wait (else after flush_s).
_FLUSH_AT = 64
# At most this many states per frame: epp applies a frame in one go, one frame per
# loop turn, and 32 states take it about 50 µs, so a request that arrives meanwhile
# waits no longer than that.
_STATES_PER_FRAME = 32
# While epp's socket buffer holds this much, log records are dropped (and counted).
_MAX_LOG_BACKLOG_BYTES = 1024 * 1024

logger = logging.getLogger(__name__)


def flush_delay_s(interval_s: float) -> float:
    """How long scrape results gather before they are sent: a fifth of the interval, at
    most 10 ms (or until a frame's worth is ready). Each flush wakes epp's loop, so
    fewer of them cost less CPU on both sides; the results are at most that much later,
    and their ``updated_at`` is still the time of the scrape."""
    return min(0.010, interval_s / 5)


class _Channel(asyncio.Protocol):
    """The socket to epp: frames in to the worker, frames out, and flow control."""

    def __init__(self, worker: _Worker) -> None:
        self._worker = worker
        self._frames = wire.FrameBuffer()
        self.transport: asyncio.Transport | None = None
        self.writable = True
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._frames.feed(data)
        try:
            for kind, body in self._frames.frames():
                self._worker.handle(kind, body)
        except wire.WireError:
            # Not epp's frames: nothing sensible can follow. epp restarts a child whose
            # socket closes.
            logger.exception("scraper process: bad frame from epp; exiting")
            if self.transport is not None:
                self.transport.close()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self._worker.schedule_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def backlog_bytes(self) -> int:
        return 0 if self.transport is None else self.transport.get_write_buffer_size()


class _Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self._loop = asyncio.get_running_loop()
        self._store = EndpointStore()
        # States that came with ADD frames, applied as the store creates the endpoints
        # (before the scraper hears of them: its back-off reads scrape_failures).
        self._incoming: dict[str, wire.EndpointState] = {}
        self._store.subscribe(self._adopt)
        self._by_id: dict[int, Endpoint] = {}
        self._ids: dict[Endpoint, int] = {}
        self._busy: set[int] = set()
        self._dirty: set[Endpoint] = set()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_s = flush_delay_s(config["interval_s"])
        self.scraper = MetricsScraper(
            self._store,
            engine=config["engine"],
            path=config["path"],
            interval_s=config["interval_s"],
            timeout_s=config["timeout_s"],
            max_body_bytes=config["max_body_bytes"],
            max_samples=config["max_samples"],
            max_backoff_s=config["max_backoff_s"],
            max_idle_interval_s=config["max_idle_interval_s"],
            stop_timeout_s=config["stop_timeout_s"],
            filter_names=config["filter_names"],
            on_update=self._updated,
            # Polls in step: the answers of a tick come together and go to epp in one
            # frame, and this loop wakes once per tick rather than once per poll. Spread
            # polls only spare the routing loop bursts, and this is not that loop.
            spread=False,
        )
        self.channel = _Channel(self)
        self.stopping = asyncio.Event()
        self._start: asyncio.Task[None] | None = None
        self.logs_dropped = 0

    # -- frames from epp ---------------------------------------------------------------

    def handle(self, kind: int, body: bytes) -> None:
        if kind == wire.ADD:
            self._add(wire.decode_add(body))
        elif kind == wire.REMOVE:
            self._remove(wire.decode_ids(body))
        elif kind == wire.INFLIGHT:
            self._set_inflight(wire.decode_ids(body))
        elif kind == wire.START:
            if self._start is None:
                self._start = self._loop.create_task(self._run_start())
        elif kind == wire.STOP:
            self.stopping.set()
        else:
            raise wire.WireError(f"unknown frame kind {kind}")

    def _add(self, items: list[tuple[wire.EndpointState, str]]) -> None:
        specs = {endpoint.address: None for endpoint in self._store.all()}
        for state, address in items:
            old = self._by_id.pop(state.id, None)
            if old is not None:  # the same id again: epp restarted us mid-change
                self._ids.pop(old, None)
            self._incoming[address] = state
            specs[address] = None
        self._store.replace(specs.items())
        for state, address in items:
            endpoint = self._store.get(address)
            if endpoint is not None:
                self._by_id[state.id] = endpoint
                self._ids[endpoint] = state.id
        self._incoming.clear()

    def _adopt(self, added: list[Endpoint], _removed: list[Endpoint]) -> None:
        for endpoint in added:
            state = self._incoming.get(endpoint.address)
            if state is None:
                continue
            endpoint.scrape_failures = state.scrape_failures
            endpoint.scrape_errors_total = state.scrape_errors_total
            endpoint.last_scrape_error = state.last_scrape_error
            endpoint.inflight_requests = 1 if state.id in self._busy else 0
            if state.updated_at:
                endpoint.metrics = Metrics(
                    waiting_requests=state.waiting_requests,
                    running_requests=state.running_requests,
                    kv_cache_usage=state.kv_cache_usage,
                    kv_block_size=state.kv_block_size,
                    kv_num_blocks=state.kv_num_blocks,
                    lora_running=state.lora_running,
                    lora_waiting=state.lora_waiting,
                    max_lora=state.max_lora,
                    models=state.models,
                    updated_at=state.updated_at,
                )

    def _remove(self, ids: list[int]) -> None:
        gone = set()
        for id_ in ids:
            endpoint = self._by_id.pop(id_, None)
            if endpoint is not None:
                self._ids.pop(endpoint, None)
                self._dirty.discard(endpoint)
                gone.add(endpoint.address)
        if gone:
            self._store.replace(
                (endpoint.address, None)
                for endpoint in self._store.all()
                if endpoint.address not in gone
            )

    def _set_inflight(self, ids: list[int]) -> None:
        self._busy = set(ids)
        for id_, endpoint in self._by_id.items():
            # The scraper reads "any in flight", not how many.
            endpoint.inflight_requests = 1 if id_ in self._busy else 0
        self.scraper.poll_busy_now()

    async def _run_start(self) -> None:
        await self.scraper.start()
        # Whatever the socket's flow control says: STARTED promises these came first.
        self.flush(force=True)
        self.channel.send(wire.frame(wire.STARTED))

    # -- frames to epp -----------------------------------------------------------------

    def _updated(self, endpoint: Endpoint) -> None:
        self._dirty.add(endpoint)
        if len(self._dirty) >= _FLUSH_AT:
            self.flush()
        else:
            self.schedule_flush()

    def schedule_flush(self) -> None:
        if self._flush_timer is None and self._dirty:
            self._flush_timer = self._loop.call_later(self._flush_s, self.flush)

    def flush(self, *, force: bool = False) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not (self.channel.writable or force):
            return  # resume_writing schedules the next flush
        ids = self._ids
        items = [(ids[ep], ep) for ep in self._dirty if ep in ids]
        self._dirty.clear()
        frames = [
            wire.frame(wire.STATES, wire.encode_endpoints(items[i : i + _STATES_PER_FRAME]))
            for i in range(0, len(items), _STATES_PER_FRAME)
        ]
        frames.append(wire.frame(wire.STATS, wire.encode_stats(self.scraper.polls_total)))
        self.channel.send(b"".join(frames))

    def send_log(self, level: int, name: str, message: str) -> None:
        if self.channel.backlog_bytes() > _MAX_LOG_BACKLOG_BYTES:
            self.logs_dropped += 1
            return
        self.channel.send(wire.frame(wire.LOG, wire.encode_log(level, name, message)))

    async def heartbeat(self) -> None:
        parent = os.getppid()
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if os.getppid() != parent:
                # epp is gone and the socket did not say so: never outlive it.
                self.stopping.set()
                return
            self.channel.send(wire.frame(wire.STATS, wire.encode_stats(self.scraper.polls_total)))


class _ToParent(logging.Handler):
    """Sends every record to epp as a LOG frame: message, and traceback if any."""

    def __init__(self, worker: _Worker) -> None:
        super().__init__()
        self._worker = worker

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
            self._worker.send_log(record.levelno, record.name, message)
        except Exception:  # a handler must not raise into the code that logged
            self.handleError(record)


async def _run(sock: socket.socket, config: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    worker = _Worker(config)
    root = logging.getLogger()
    root.handlers[:] = [_ToParent(worker)]
    root.setLevel(config["log_level"])
    await loop.create_unix_connection(lambda: worker.channel, sock=sock)
    heartbeat = loop.create_task(worker.heartbeat())
    stop = loop.create_task(worker.stopping.wait())
    try:
        await asyncio.wait([stop, worker.channel.closed], return_when=asyncio.FIRST_COMPLETED)
    finally:
        heartbeat.cancel()
        stop.cancel()
        await worker.scraper.stop()
        if worker.channel.transport is not None:
            worker.channel.transport.close()


def main(argv: list[str]) -> int:
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    config = json.loads(argv[1])
    # As epp does once it serves: what start-up built lives as long as the process, so
    # the collector need not scan it again on every full collection.
    gc.collect()
    gc.freeze()
    if config["nice"] > 0:
        os.nice(config["nice"])
    uvloop.run(_run(sock, config))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
