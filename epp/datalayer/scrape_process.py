"""Scraping in a child process, so that it never delays the event loop that routes.

Why. Polling 256 pods every 50 ms is ~5,000 scrapes a second at ~90 µs of CPU each:
half a core. On the event loop that serves ext_proc streams, a routing decision waited
behind whichever scrapes were ready before it, and request p99 with 256 scraped pods was
~1.9x the p99 with 8 (``benchmarks/bench_scrape_fleet.py``; a py-spy profile of that epp
put ~70 % of its main thread's busy time in the scraper). A thread would not help: it
shares the GIL, so a request would still wait for the scraper's bytecode. A process
runs on the other core, and epp's loop only applies the results.

How. :class:`ProcessScraper` starts ``python -m epp.datalayer.scrape_worker`` with one
end of a socket pair and keeps the child's mirror of the endpoint table in step (ADD,
REMOVE, and every ``interval_s`` the set of endpoints with requests in flight, which the
child's idle pace and wake-up read). The child runs the same
:class:`~epp.datalayer.scraper.MetricsScraper` (same client, limits, back-off and idle
pace, same log lines, which reach epp's handlers) and sends each scraped endpoint's
whole state back, gathered over 10 ms (:mod:`~epp.datalayer.scrape_wire`). epp applies a
frame of states in one callback: per endpoint a new ``Metrics`` replaced whole (the one
with the child's ``time.monotonic()`` stamp of the scrape, the clock every process on
the machine shares) and the failure fields, with no await in between, so a reader on
the loop never sees half an update. That costs 2-4 µs per scrape on the loop, in frames
of at most 32 endpoints, at most 32 states per loop turn.

Contract kept with the in-loop scraper: ``start()`` returns once every endpoint known
then was scraped once (or ``start_timeout_s`` passed, which is logged); discovery
changes reach the child in order; a removed endpoint's late results are dropped
(endpoints cross as ids that are never reused); ``stop()`` is graceful and bounded
(STOP, ``stop_timeout_s`` for the child to close its connections and exit, then
SIGKILL); every network call keeps the scraper's deadline, in the child.

A crashed scraper is restarted, not fatal: when the child's socket closes, a frame is
malformed, or it has been silent for ``hang_timeout_s`` (it sends at least one frame a
second), the child is killed if need be, the exit is logged at ERROR with its status,
``restarts_total`` grows (``epp_scraper_restarts_total``) and a new child starts after
a back-off (0.1 s doubling to 5 s; reset once a child has lived a minute). The new one
gets every endpoint with its current state, so back-off and error logging go on where
they were. Meanwhile nothing is scraped: the metrics age as they would with unreachable
pods, ``epp_endpoint_metrics_age_seconds`` shows it, and after the staleness threshold
the endpoints count as stale for admission and the prefer-fresh filter.

Example::

    scraper = ProcessScraper(store, interval_s=0.05)
    await scraper.start()   # the child has scraped what the store holds now
    ...
    await scraper.stop()
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import site
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any, cast

from epp.datalayer import scrape_wire as wire
from epp.datalayer.endpoint import Endpoint, Metrics
from epp.datalayer.metric_mappings import AUTO
from epp.datalayer.scraper import (
    DEFAULT_INTERVAL_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_SAMPLES,
    DEFAULT_STOP_TIMEOUT_S,
    MetricsScraper,
)
from epp.datalayer.store import EndpointStore

__all__ = ["ProcessScraper"]

logger = logging.getLogger(__name__)

DEFAULT_HANG_TIMEOUT_S = 5.0  # five missed heartbeats
# The scraper process runs at this niceness. On a machine short of CPU (2 cores shared
# with Envoy, here with the pods too) a routing decision then takes the CPU from a
# scrape when both are ready, rather than waiting out its time slice: scraped numbers
# may come a little later, routing does not. Still weight 110 against 1024 (about 10 %
# of a busy core when contended), far above the ~1 % it needs to keep metrics fresh
# enough for the 2 s staleness threshold at a slower pace.
DEFAULT_NICE = 10
_RESTART_MIN_S = 0.1
_RESTART_MAX_S = 5.0
_STABLE_AFTER_S = 60.0  # a child that lived this long resets the restart back-off
# States applied per loop turn before the rest waits for the next turn (the child's
# frames hold at most as many): a tick's 256 states, or a backlog after a stall, are
# worked off in slices of about 50 µs, never in one long callback.
_STATES_PER_TURN = 32
_ADD_PER_FRAME = 4096
# The directory that holds the epp package this module came from: the child imports
# the same code, whatever its working directory.
_IMPORT_ROOT = str(Path(__file__).resolve().parents[2])


class ProcessScraper:
    """Keeps the metrics of every endpoint in ``store`` fresh from a scraper process.

    Takes the arguments of :class:`~epp.datalayer.scraper.MetricsScraper` that a
    process can be given (``engine`` by name), checked the same way, plus
    ``start_timeout_s`` (how long :meth:`start` waits for the first round; default the
    scrape timeout plus 10 s for the child to start), ``hang_timeout_s``, ``nice``
    (added to the child's niceness; see ``DEFAULT_NICE``) and ``python`` (the
    interpreter to run the child with). The store's listeners must be
    called on the event loop :meth:`start` runs on, or from another thread (changes
    are then handed to the loop with ``call_soon_threadsafe``).
    """

    def __init__(
        self,
        store: EndpointStore,
        *,
        engine: str = AUTO,
        path: str = "/metrics",
        interval_s: float = DEFAULT_INTERVAL_S,
        timeout_s: float | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        max_backoff_s: float | None = None,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
        filter_names: bool = True,
        max_idle_interval_s: float | None = None,
        start_timeout_s: float | None = None,
        hang_timeout_s: float = DEFAULT_HANG_TIMEOUT_S,
        nice: int = DEFAULT_NICE,
        python: str = sys.executable,
    ) -> None:
        if not isinstance(engine, str):
            raise TypeError("a scraper process takes the engine by name")
        if hang_timeout_s <= 0:
            raise ValueError(f"hang_timeout_s must be > 0, got {hang_timeout_s}")
        # The in-loop scraper checks the arguments and works out the defaults.
        shape = MetricsScraper(
            EndpointStore(),
            engine=engine,
            path=path,
            interval_s=interval_s,
            timeout_s=timeout_s,
            max_body_bytes=max_body_bytes,
            max_samples=max_samples,
            max_backoff_s=max_backoff_s,
            max_idle_interval_s=max_idle_interval_s,
            stop_timeout_s=stop_timeout_s,
            filter_names=filter_names,
        )
        self._store = store
        self.interval_s = interval_s
        self.timeout_s = shape.timeout_s
        self._config: dict[str, Any] = {
            "engine": engine,
            "path": path,
            "interval_s": interval_s,
            "timeout_s": shape.timeout_s,
            "max_body_bytes": max_body_bytes,
            "max_samples": max_samples,
            "max_backoff_s": shape.max_backoff_s,
            "max_idle_interval_s": shape.max_idle_interval_s,
            "stop_timeout_s": stop_timeout_s,
            "filter_names": filter_names,
            "nice": nice,
        }
        self._stop_timeout_s = stop_timeout_s
        self._start_timeout_s = (
            shape.timeout_s + 10.0 if start_timeout_s is None else start_timeout_s
        )
        self._hang_timeout_s = hang_timeout_s
        self._python = python
        self._ids: dict[Endpoint, int] = {}
        self._by_id: dict[int, Endpoint] = {}
        self._next_id = 1
        self._busy_sent: frozenset[int] = frozenset()
        self._child: _Child | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._restart_delay_s = _RESTART_MIN_S
        self._restart_task: asyncio.Task[None] | None = None
        self._polls_before = 0  # polls of the children that came before this one
        self.restarts_total = 0
        self._started = False
        self._stopped = False

    # -- what observability reads ----------------------------------------------------

    @property
    def polls_total(self) -> int:
        """Polls started by every scraper process so far."""
        child = self._child
        return self._polls_before + (child.polls if child is not None else 0)

    @property
    def running(self) -> bool:
        """True while a scraper process is up and talking."""
        child = self._child
        return child is not None and child.connected and not self._stopped

    @property
    def pid(self) -> int | None:
        """The scraper process's id (for tests and debugging)."""
        child = self._child
        return None if child is None else child.process.pid

    def scraped_addresses(self) -> frozenset[str]:
        """Addresses handed to the scraper process."""
        if self._stopped:
            return frozenset()
        return frozenset(endpoint.address for endpoint in self._ids)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the scraper process, hand it every endpoint the store holds, and wait
        (at most ``start_timeout_s``) until it has scraped each once."""
        if self._started:
            raise RuntimeError("ProcessScraper.start() called twice")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._store.subscribe(self._on_store_change)
        for endpoint in self._store.all():
            self._assign(endpoint)
        child = await self._spawn()
        self._timer = self._loop.call_later(self.interval_s, self._tick)
        try:
            await asyncio.wait_for(asyncio.shield(child.started), self._start_timeout_s)
        except TimeoutError:
            logger.warning(
                "scraper process: first round of scrapes not done after %.1fs; "
                "serving on, metrics come as they are scraped",
                self._start_timeout_s,
            )
        except _ChildGone:
            pass  # logged, and a new child is on its way
        fresh = sum(1 for ep in self._ids if ep.metrics.updated_at > 0 and ep.scrape_failures == 0)
        logger.info(
            "metrics scraper process %d started: %d/%d endpoints scraped, every %.3fs "
            "(timeout %.3fs)",
            child.process.pid,
            fresh,
            len(self._ids),
            self.interval_s,
            self.timeout_s,
        )

    async def stop(self) -> None:
        """Tell the child to stop, wait for it (bounded), then kill it if need be."""
        if self._stopped:
            return
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._restart_task is not None:
            self._restart_task.cancel()
            await asyncio.wait([self._restart_task], timeout=self._stop_timeout_s)
        child, self._child = self._child, None
        if child is None:
            return
        self._polls_before += child.polls
        child.send(wire.frame(wire.STOP))
        code = await child.reap(self._stop_timeout_s + 1.0)
        if code != 0:
            logger.warning("scraper process %d ended with status %s", child.process.pid, code)

    # -- the endpoint table ----------------------------------------------------------

    def _assign(self, endpoint: Endpoint) -> int:
        id_ = self._next_id
        self._next_id += 1
        self._ids[endpoint] = id_
        self._by_id[id_] = endpoint
        return id_

    def _on_store_change(self, added: list[Endpoint], removed: list[Endpoint]) -> None:
        if self._stopped or not (added or removed):
            return
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop:
            # Changed from another thread: the table and the socket belong to the loop.
            loop.call_soon_threadsafe(self._apply_change, list(added), list(removed))
        else:
            self._apply_change(added, removed)

    def _apply_change(self, added: list[Endpoint], removed: list[Endpoint]) -> None:
        if self._stopped:
            return
        gone = [self._ids.pop(endpoint) for endpoint in removed if endpoint in self._ids]
        for id_ in gone:
            del self._by_id[id_]
        new = [endpoint for endpoint in added if endpoint not in self._ids]
        for endpoint in new:
            self._assign(endpoint)
        child = self._child
        if child is None:
            return  # the next child gets the whole table
        if gone:
            child.send(wire.frame(wire.REMOVE, wire.encode_ids(gone)))
        if new:
            child.send(self._add_frames(new))

    def _add_frames(self, endpoints: list[Endpoint]) -> bytes:
        items = [(wire.state_of(self._ids[ep], ep), ep.address) for ep in endpoints]
        return b"".join(
            wire.frame(wire.ADD, wire.encode_add(items[i : i + _ADD_PER_FRAME]))
            for i in range(0, len(items), _ADD_PER_FRAME)
        )

    def _tick(self) -> None:
        """Every interval: tell the child which endpoints have requests in flight (when
        that changed), and check that it still talks."""
        loop = self._loop
        assert loop is not None
        self._timer = loop.call_later(self.interval_s, self._tick)
        child = self._child
        if child is None or not child.connected:
            return
        busy = frozenset(id_ for ep, id_ in self._ids.items() if ep.inflight_requests > 0)
        if busy != self._busy_sent:
            self._busy_sent = busy
            child.send(wire.frame(wire.INFLIGHT, wire.encode_ids(sorted(busy))))
        # A child still starting (imports, a first round of scrapes that time out) gets
        # the start's allowance; then it sends a frame at least once a second.
        limit_s = self._hang_timeout_s if child.started.done() else self._start_timeout_s
        if loop.time() - child.heard_at > limit_s:
            child.fail(f"silent for {limit_s:g}s")

    # -- the child -------------------------------------------------------------------

    async def _spawn(self) -> _Child:
        loop = self._loop
        assert loop is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        if _IMPORT_ROOT not in _site_directories():
            # A source checkout (or a path the parent was given): the child must import
            # this epp, not another one an editable install or the working directory
            # would find. An installed epp is found as it is, and the site directory
            # goes nowhere near the front of the path, where it could shadow the stdlib.
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [_IMPORT_ROOT, env.get("PYTHONPATH")]))
        # The child sends only records the parent would keep (its handlers filter again).
        level = min(
            logging.getLogger(name).getEffectiveLevel()
            for name in ("epp.datalayer.scraper", "epp.datalayer.scrape_worker")
        )
        config = {**self._config, "log_level": level}
        argv = [
            self._python,
            "-m",
            "epp.datalayer.scrape_worker",
            str(theirs.fileno()),
            json.dumps(config),
        ]

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
            )

        try:
            # Forking a large process takes a while: not on the loop.
            process = await loop.run_in_executor(None, spawn)
        finally:
            theirs.close()
        child = _Child(self, process, loop)
        self._child = child
        await loop.create_unix_connection(lambda: child, sock=ours)
        self._busy_sent = frozenset(
            id_ for ep, id_ in self._ids.items() if ep.inflight_requests > 0
        )
        frames = [wire.frame(wire.INFLIGHT, wire.encode_ids(sorted(self._busy_sent)))]
        if self._ids:
            frames.append(self._add_frames(list(self._ids)))
        frames.append(wire.frame(wire.START))
        child.send(b"".join(frames))
        return child

    def _apply(self, body: bytes) -> int:
        """Apply a STATES frame: per endpoint, new Metrics (when the scrape is newer) and
        the failure fields, with nothing else running in between. Returns the count."""
        raws, texts, names, end = wire.unpack_states(body)
        if end != len(body):
            raise wire.WireError(f"{len(body) - end} bytes after the states")
        by_id = self._by_id
        for raw, text, (running, waiting, models) in zip(raws, texts, names, strict=True):
            endpoint = by_id.get(raw[0])
            if endpoint is None:
                continue  # removed since; its id is never used again
            if raw[8] != endpoint.metrics.updated_at:
                endpoint.metrics = Metrics(
                    waiting_requests=raw[3],
                    running_requests=raw[4],
                    kv_cache_usage=raw[5],
                    kv_block_size=None if raw[6] < 0 else raw[6],
                    kv_num_blocks=None if raw[7] < 0 else raw[7],
                    lora_running=running,
                    lora_waiting=waiting,
                    max_lora=None if raw[10] < 0 else raw[10],
                    models=models,
                    updated_at=raw[8],
                )
            endpoint.scrape_failures = raw[1]
            endpoint.scrape_errors_total = raw[2]
            endpoint.last_scrape_error = text
        return len(raws)

    def _child_gone(self, child: _Child, why: str) -> None:
        """``child`` failed (its socket closed, it sent garbage, or it went silent)."""
        if child is not self._child:
            return
        self._child = None
        self._polls_before += child.polls
        if self._stopped:
            return
        loop = self._loop
        assert loop is not None
        delay = self._restart_delay_s
        lived = loop.time() - child.spawned_at
        if lived > _STABLE_AFTER_S:
            delay = _RESTART_MIN_S
        self._restart_delay_s = min(_RESTART_MAX_S, delay * 2)
        self.restarts_total += 1

        async def restart() -> None:
            code = await child.reap(1.0)
            logger.error(
                "scraper process %d failed (%s; exit status %s) after %.1fs; "
                "restarting it in %.1fs; metrics age until then",
                child.process.pid,
                why,
                code,
                lived,
                delay,
            )
            wait_s = delay
            while True:
                await asyncio.sleep(wait_s)
                if self._stopped or self._child is not None:
                    return
                try:
                    await self._spawn()
                    return
                except OSError as exc:  # no interpreter, no fds, no memory: try again
                    wait_s = self._restart_delay_s
                    self._restart_delay_s = min(_RESTART_MAX_S, wait_s * 2)
                    logger.error(
                        "could not start a scraper process (%s); trying again in %.1fs",
                        exc,
                        wait_s,
                    )

        self._restart_task = loop.create_task(restart())


class _ChildGone(Exception):
    """The scraper process failed before it finished its first round."""


class _Child(asyncio.Protocol):
    """One scraper process and the parent's end of its socket."""

    def __init__(
        self,
        owner: ProcessScraper,
        process: subprocess.Popen[bytes],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.owner = owner
        self.process = process
        self.loop = loop
        self.spawned_at = self.heard_at = loop.time()
        self.polls = 0
        self.connected = False
        self.started: asyncio.Future[None] = loop.create_future()
        self.started.add_done_callback(_quiet)
        self._transport: asyncio.Transport | None = None
        self._frames = wire.FrameBuffer()
        self._draining = False
        self._failed = False

    # -- the socket ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        self.connected = True

    def data_received(self, data: bytes) -> None:
        self.heard_at = self.loop.time()
        self._frames.feed(data)
        if not self._draining:
            self._drain()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connected = False
        self.fail("its socket closed" if exc is None else f"its socket failed: {exc}")

    def send(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _drain(self) -> None:
        """Apply whole frames, at most ``_STATES_PER_TURN`` states per loop turn."""
        self._draining = False
        if self._failed:
            return
        applied = 0
        try:
            while applied < _STATES_PER_TURN:
                item = self._frames.next()
                if item is None:
                    if self._transport is not None and not self._failed:
                        self._transport.resume_reading()
                    return
                applied += self._handle(*item)
        except wire.WireError as exc:
            self.fail(f"a bad frame: {exc}")
            return
        # More is waiting: read no more until it is applied, a slice per turn.
        if self._transport is not None:
            self._transport.pause_reading()
        self._draining = True
        self.loop.call_soon(self._drain)

    def _handle(self, kind: int, body: bytes) -> int:
        if kind == wire.STATES:
            return self.owner._apply(body)
        if kind == wire.STATS:
            self.polls = wire.decode_stats(body)
        elif kind == wire.LOG:
            level, name, text = wire.decode_log(body)
            logging.getLogger(name or __name__).log(level, "%s", text)
        elif kind == wire.STARTED:
            if not self.started.done():
                self.started.set_result(None)
        else:
            raise wire.WireError(f"unknown frame kind {kind}")
        return 1

    # -- failure and exit ----------------------------------------------------------------

    def fail(self, why: str) -> None:
        if self._failed:
            return
        self._failed = True
        if not self.started.done():
            self.started.set_exception(_ChildGone(why))
        if self._transport is not None:
            self._transport.abort()
        if self.process.poll() is None and not self.owner._stopped:
            self.process.kill()  # broken or hung: it gets no second chance
        self.owner._child_gone(self, why)

    async def reap(self, timeout_s: float) -> int | None:
        """The exit status, waiting up to ``timeout_s`` before SIGKILL (and 5 s more).
        Popen reaps (in a worker thread), so the status is never lost to another
        waiter."""
        try:
            for wait_s in (timeout_s, 5.0):
                try:
                    return await self.loop.run_in_executor(None, self.process.wait, wait_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
            return None
        finally:
            if self._transport is not None:
                self._transport.abort()


def _site_directories() -> set[str]:
    paths = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    paths.update(site.getsitepackages())
    return {str(Path(path).resolve()) for path in paths if path}


def _quiet(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # a start nobody waited for is not an error to report
