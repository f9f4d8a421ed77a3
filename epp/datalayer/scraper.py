"""Poll every endpoint's Prometheus ``/metrics`` and keep ``Endpoint.metrics`` current.

Each endpoint is polled every ``interval_s`` (more slowly while its scrapes fail, or
while it is idle), until it leaves the store or the scraper stops. Every poll goes
through one :class:`~epp.datalayer.http1_client.Http1Client`, so a steady poll reuses one
keep-alive TCP connection per endpoint.

On success the endpoint gets a new ``Metrics`` (replaced whole), ``scrape_failures = 0``
and ``last_scrape_error = None``. On any failure (connect error, timeout, HTTP status,
unparsable text, missing or out-of-range metrics, a page over the limits below)
``scrape_failures`` grows, ``last_scrape_error`` holds the reason, and the old ``Metrics``
stay, so ``Endpoint.is_fresh(staleness_s)`` turns false once they are ``staleness_s``
old. A failure is logged at WARNING only when its text differs from the previous one, and
the recovery at INFO, so a dead pod logs twice, not twenty times a second.

The scrapes run on an event loop of their own, in the scraper process
(:mod:`~epp.datalayer.scrape_process`, epp's default), or on the one that routes requests
(``--scrape-mode inline``); either way each must be cheap, and they must not all fall
due at once. What a poll costs (``benchmarks/bench_scrape_fleet.py``):
aiohttp's client took about 470 µs of CPU per poll, which made 256 pods at 50 ms more
than two cores; the small client of :mod:`~epp.datalayer.http1_client` writes one
request built once per pod and reads the answer in one callback. A page byte-for-byte
the same as the endpoint's last good one (an idle pod's) is not parsed again: its
metrics are the last ones, stamped with the new time. And the polls are spread over the
interval: the endpoints present at :meth:`MetricsScraper.start`, or added together, get
their first poll at evenly spaced offsets, so 256 pods make a poll every 0.2 ms rather
than a burst of 256 every 50 ms that a request arriving behind it would wait out. That
is for the routing loop (``--scrape-mode inline``). The scraper process polls in step
instead (``spread=False``): every endpoint on one grid of ticks, so its loop wakes once a
tick and the answers of a tick reach epp together, in one frame, which costs both
processes less per poll (``bench_scrape_fleet.py``).

What one pod can make epp spend is bounded, per scrape and over time:

- **Body size** (``max_body_bytes``, default 4 MiB). A vLLM page is 60-100 KB unfiltered
  and a few KB with the ``name[]`` filter epp sends; 64 data-parallel engines behind one
  server make about 1.4 MB unfiltered. 4 MiB leaves room for that and refuses what took
  epp to 87 % of a core (a 14.8 MB page every 50 ms). A declared ``Content-Length`` over
  the limit fails before the body is read; a chunked body is read up to the limit. The
  response head and the framing are bounded too (see
  :mod:`~epp.datalayer.http1_response`), and every poll has a deadline (``timeout_s``),
  connect included.
- **Wanted samples** (``max_samples``, default 1,000, and 64 characters per sample on
  average). Unwanted lines cost under 1 ns a byte to skip; each wanted line is parsed
  in Python for a few µs. A real page has 3-4 wanted series per engine (about 260 for 64
  engines) plus one info line; more is refused before any line is parsed.
- **Back-off.** A pod whose scrapes keep failing is polled less often, up to once a
  second (:mod:`~epp.datalayer.scrape_pace`).

Pacing. A poll is not a task: a timer (``loop.call_at``) sends the request on the
endpoint's idle connection, and the answer is read, parsed and recorded in the
connection's ``data_received``, which also sets the timer of the next poll; the deadline
is one more timer. Only a poll with no idle connection (the first, or after a failure)
runs as a task, to connect. A pod that answers with the same lines as last time and only
other numbers (a busy pod's page) is read without the parser
(:mod:`~epp.datalayer.page_shape`). With tests' ``sleep`` seam, one task per endpoint
sleeps between polls instead, with the same delays.

An endpoint that is idle is polled less often too, and back at the full pace at the
first sign of work (:mod:`~epp.datalayer.scrape_pace`): a watcher looks at the slowed
endpoints' in-flight counts every ``interval_s``.

Example::

    scraper = MetricsScraper(store, interval_s=0.05)
    await scraper.start()   # scrapes what the store holds now, then follows it
    ...
    await scraper.stop()
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlencode

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.datalayer.errors import DataLayerError, MetricsExtractError, ScrapeError
from epp.datalayer.extract import detect_mapping, extract_metrics
from epp.datalayer.http1_client import ConnectionDropped, Http1Client, Response
from epp.datalayer.metric_mappings import AUTO, MetricMapping, mappings_for, wanted_names
from epp.datalayer.page_shape import PageShape
from epp.datalayer.prometheus_text import Sample, parse_samples
from epp.datalayer.scrape_pace import (
    ScrapePace,
    default_max_backoff_s,
    default_max_idle_interval_s,
    default_timeout_s,
)
from epp.datalayer.store import EndpointStore

__all__ = [
    "DEFAULT_INTERVAL_S",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_SAMPLES",
    "MetricsScraper",
]

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.05  # the reference EPP's refresh interval
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # see the module docstring for the sizes
DEFAULT_MAX_SAMPLES = 1000
DEFAULT_STOP_TIMEOUT_S = 5.0
# The wanted lines of a page may hold this many characters per allowed sample: a vLLM
# gauge line holds about 60 after its name, the cache_config_info line about 700. Bounds
# one huge line (thousands of labels) the way max_samples bounds many lines.
_CHARS_PER_SAMPLE = 64
# Failure texts come partly from the pod (a malformed line, a label); they are stored
# and logged cut to this length.
_MAX_ERROR_CHARS = 400
# A page up to this size is kept per endpoint to tell an unchanged page (an idle pod's)
# at the cost of one bytes comparison; a filtered vLLM page is under 1 KB. Bounds what
# 256 hostile pods can make epp hold to 16 MiB.
_MAX_REMEMBERED_BODY = 64 * 1024
# Characters a path may keep as written; anything else is percent-encoded, so a
# configured path can never break the request line.
_PATH_SAFE = "/?&=%:@!$'()*+,;~-._[]"


# Per endpoint: the last page that scraped well, the Metrics it gave, its shape (to read
# the next page that differs only in numbers) and the engine mapping it matched.
_LastPage = tuple[bytes, Metrics, PageShape | None, MetricMapping]


class MetricsScraper:
    """Keeps the metrics of every endpoint in ``store`` fresh.

    ``engine`` is ``"auto"`` (recognize vLLM or SGLang per endpoint from what it exposes),
    an engine name from ``MAPPINGS``, or a custom :class:`MetricMapping`.

    ``max_body_bytes`` and ``max_samples`` bound the work of one scrape (0: no limit);
    ``max_backoff_s`` caps the back-off of a failing endpoint and ``max_idle_interval_s``
    the pause between polls of an idle one (defaults and meaning:
    :mod:`~epp.datalayer.scrape_pace`).
    See the module docstring for why each default is what it is.

    ``sleep`` and ``clock`` are the test seams: ``sleep`` paces a polling task per
    endpoint (by default timers pace the polls, and no task sleeps; see "Pacing") and
    ``clock`` stamps ``Metrics.updated_at`` (default ``time.monotonic``, which
    ``Endpoint.is_fresh`` compares against). ``fetch`` replaces
    the HTTP client: ``await fetch(address, target)`` returns the body of a 200 answer
    or raises :class:`ScrapeError` (the benchmarks put aiohttp there to compare).
    ``spread`` (default) spaces the polls over the interval; ``False`` keeps them in step
    on one grid of ticks (see "the polls are spread" above).

    The store's listeners must be called on the scraper's event loop, or from another
    thread (changes are then handed to the loop with ``call_soon_threadsafe``).
    """

    def __init__(
        self,
        store: EndpointStore,
        *,
        engine: str | MetricMapping = AUTO,
        path: str = "/metrics",
        interval_s: float = DEFAULT_INTERVAL_S,
        timeout_s: float | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        max_backoff_s: float | None = None,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
        fetch: Callable[[str, str], Awaitable[bytes]] | None = None,
        filter_names: bool = True,
        max_idle_interval_s: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_update: Callable[[Endpoint], None] | None = None,
        spread: bool = True,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        if max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0 (0: no limit), got {max_body_bytes}")
        if max_samples < 0:
            raise ValueError(f"max_samples must be >= 0 (0: no limit), got {max_samples}")
        if max_backoff_s is not None and max_backoff_s < 0:
            raise ValueError(f"max_backoff_s must be >= 0, got {max_backoff_s}")
        if max_idle_interval_s is not None and max_idle_interval_s < 0:
            raise ValueError(f"max_idle_interval_s must be >= 0, got {max_idle_interval_s}")
        self._store = store
        self._mappings = (engine,) if isinstance(engine, MetricMapping) else mappings_for(engine)
        self._names = wanted_names(self._mappings)
        self.path = path
        self._target = quote(path, safe=_PATH_SAFE)
        # prometheus_client (what vLLM and SGLang serve /metrics with) honours name[]:
        # asking for the handful of series epp reads spares the model server rendering,
        # and epp parsing, tens of KB of histograms 20 times a second. A server that
        # ignores the query sends everything, which the parser handles anyway.
        self._query = ""
        if filter_names:
            separator = "&" if "?" in path else "?"
            self._query = separator + urlencode([("name[]", n) for n in sorted(self._names)])
        self.interval_s = interval_s
        self.timeout_s = default_timeout_s(interval_s) if timeout_s is None else timeout_s
        self._max_body_bytes = max_body_bytes or None
        self._max_samples = max_samples or None
        self._max_sample_chars = max_samples * _CHARS_PER_SAMPLE or None
        self.max_backoff_s = default_max_backoff_s() if max_backoff_s is None else max_backoff_s
        self._stop_timeout_s = stop_timeout_s
        self._client: Http1Client | None = None
        self._fetch_with = fetch
        # Per endpoint: the last page that scraped well and the Metrics it gave.
        self._last_good: dict[Endpoint, _LastPage] = {}
        self._sleep = sleep
        self._clock = clock
        self._on_update = on_update
        self.max_idle_interval_s = (
            default_max_idle_interval_s(interval_s)
            if max_idle_interval_s is None
            else max_idle_interval_s
        )
        self.pace = ScrapePace(interval_s, self.max_backoff_s, self.max_idle_interval_s)
        # Timer-driven polls (see "Pacing" in the module docstring) unless a test paces
        # the loop through ``sleep``; then one task per endpoint sleeps between polls.
        self._timers = sleep is asyncio.sleep
        self._target_query = self._target + self._query
        self.polls_total = 0  # polls started, for benchmarks, tests and /metrics
        self.restarts_total = 0  # never restarts: it lives on epp's loop (ProcessScraper does)
        self._polls: dict[Endpoint, _Poller] = {}  # one per endpoint in the store
        self._live: set[asyncio.Task[None]] = set()  # also those cancelled but not yet done
        self._watch_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._stopped = False
        self._spread = spread
        self._grid_origin: float | None = None  # loop.time() of the first aligned tick
        # Polls in step: the pollers due at each tick of the grid, and one timer per tick
        # for them all (a timer per poll cost about 5 % of a poll's CPU at 256 pods).
        self._ticks: dict[float, list[_Poller]] = {}
        self._tick_timers: dict[float, asyncio.TimerHandle] = {}

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Scrape every endpoint the store holds once (so first requests have data), then
        keep polling each endpoint the store holds as it changes."""
        if self._started:
            raise RuntimeError("MetricsScraper.start() called twice")
        self._started = True
        self._loop = asyncio.get_running_loop()
        # Subscribe first so no change made while the first scrapes run is missed.
        self._store.subscribe(self._on_store_change)
        initial = list(self._store.all())
        await asyncio.gather(*(self.scrape_once(endpoint) for endpoint in initial))
        for k, endpoint in enumerate(initial):
            current = self._store.get(endpoint.address) is endpoint
            if current and not self._stopped and endpoint not in self._polls:
                # Spread over one interval (see the module docstring); the last waits
                # a whole interval, as a single endpoint does.
                self._start_polling(endpoint, (k + 1) / len(initial) * self.interval_s)
        if self._timers and self.max_idle_interval_s > self.interval_s and not self._stopped:
            self._watch_timer = self._loop.call_later(self.interval_s, self._watch)
        fresh = sum(1 for endpoint in initial if endpoint.scrape_failures == 0)
        logger.info(
            "metrics scraper started: %d/%d endpoints scraped, every %.3fs (timeout %.3fs)",
            fresh,
            len(initial),
            self.interval_s,
            self.timeout_s,
        )

    async def stop(self) -> None:
        """Cancel every poll and polling task, wait for the tasks (bounded), close the
        connections."""
        self._stopped = True
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None
        for poller in self._polls.values():
            poller.cancel()
        self._polls.clear()
        for timer in self._tick_timers.values():
            timer.cancel()
        self._tick_timers.clear()
        self._ticks.clear()
        tasks = list(self._live)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._stop_timeout_s)
            if pending:
                logger.warning(
                    "%d scrape tasks did not stop within %.1fs", len(pending), self._stop_timeout_s
                )
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._last_good.clear()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._started and not self._stopped

    def scraped_addresses(self) -> frozenset[str]:
        """Addresses being polled now (for tests and debug endpoints)."""
        return frozenset(endpoint.address for endpoint in self._polls)

    # -- one scrape ------------------------------------------------------------------

    async def scrape_once(self, endpoint: Endpoint, *, reuse: bool = True) -> bool:
        """Poll ``endpoint`` once and record the outcome on it; never raises (but
        propagates cancellation). True when the scrape succeeded and the endpoint looks
        busy (see :meth:`_take`)."""
        try:
            body = await self._fetch(endpoint.address, reuse=reuse)
        except DataLayerError as exc:
            self._record_failure(endpoint, str(exc))
            return False
        except Exception as exc:  # a bug: count it and say so, but keep polling
            self._record_failure(endpoint, f"internal error: {exc!r}", exc_info=True)
            return False
        return self._take(endpoint, body)

    def _take(self, endpoint: Endpoint, body: bytes) -> bool:
        """Record a 200 answer's ``body`` on ``endpoint``; never raises.

        Returns whether the endpoint looks busy: requests waiting or running on it, or
        in flight from epp, or numbers that moved since the last scrape. False after a
        failure (the back-off then paces the polls).
        """
        try:
            last = self._last_good.get(endpoint)
            if last is not None and last[0] == body:
                # The same bytes parsed and passed every check last time.
                metrics = replace(last[1], updated_at=self._clock())
                mapping = None
            else:
                text = body.decode("utf-8", errors="replace")
                read = None
                if last is not None and last[2] is not None:
                    # Only the numbers changed (a busy pod's page): see page_shape.
                    read = last[2].read_metrics(text, updated_at=self._clock())
                if read is not None:
                    assert last is not None
                    metrics, shape, known, mapping = read, last[2], last[3], None
                else:
                    metrics, mapping, samples = self._parse(text)
                    shape, known = PageShape.of(text, self._names, samples, mapping), mapping
                if len(body) <= _MAX_REMEMBERED_BODY:
                    self._last_good[endpoint] = (body, metrics, shape, known)
                else:
                    self._last_good.pop(endpoint, None)
        except DataLayerError as exc:
            self._record_failure(endpoint, str(exc))
            return False
        except Exception as exc:  # a bug: count it and say so, but keep polling
            self._record_failure(endpoint, f"internal error: {exc!r}", exc_info=True)
            return False
        old = endpoint.metrics
        first = old.updated_at == 0.0
        busy = (
            metrics.waiting_requests > 0
            or metrics.running_requests > 0
            or endpoint.inflight_requests > 0
            or metrics.kv_cache_usage != old.kv_cache_usage
            or first
        )
        endpoint.metrics = metrics
        if endpoint.last_scrape_error is not None:
            logger.info(
                "scrape of %s recovered after %d failures (last error: %s)",
                endpoint.address,
                endpoint.scrape_failures,
                endpoint.last_scrape_error,
            )
        elif first and mapping is not None:
            logger.info("first scrape of %s: %s metrics", endpoint.address, mapping.engine)
        endpoint.scrape_failures = 0
        endpoint.last_scrape_error = None
        if self._on_update is not None:
            self._on_update(endpoint)
        return busy

    def _parse(self, text: str) -> tuple[Metrics, MetricMapping, dict[str, list[Sample]]]:
        samples = parse_samples(
            text, self._names, max_samples=self._max_samples, max_chars=self._max_sample_chars
        )
        mapping = detect_mapping(samples, self._mappings)
        if mapping is None:
            expected = " or ".join(sorted({m.waiting[0] for m in self._mappings}))
            raise MetricsExtractError(f"no known engine metrics found (looked for {expected})")
        return extract_metrics(samples, mapping, updated_at=self._clock()), mapping, samples

    async def _fetch(self, address: str, *, reuse: bool = True) -> bytes:
        """GET the metrics page of ``address``; every failure becomes a ScrapeError."""
        target = self._target + self._query
        if self._fetch_with is not None:
            return await self._fetch_with(address, target)
        client = self._get_client()
        try:
            response = await client.get(address, target, timeout_s=self.timeout_s, reuse=reuse)
        except (TimeoutError, ScrapeError) as exc:
            raise self._fetch_error(address, exc) from exc
        return self._body_of(address, response)

    def _fetch_error(self, address: str, exc: BaseException) -> ScrapeError:
        # Errors name the URL without the long name[] query, to keep logs readable.
        url = f"http://{address}{self.path}"
        if isinstance(exc, TimeoutError):
            return ScrapeError(f"GET {url}: timed out after {self.timeout_s:g}s")
        return ScrapeError(f"GET {url}: {exc}")

    def _body_of(self, address: str, response: Response) -> bytes:
        if response.status != 200:
            url = f"http://{address}{self.path}"
            raise ScrapeError(f"GET {url}: HTTP {response.status} {response.reason}")
        return response.body

    def _record_failure(self, endpoint: Endpoint, error: str, *, exc_info: bool = False) -> None:
        if len(error) > _MAX_ERROR_CHARS:
            error = error[:_MAX_ERROR_CHARS] + "..."
        endpoint.scrape_failures += 1
        endpoint.scrape_errors_total += 1
        if error != endpoint.last_scrape_error:
            updated_at = endpoint.metrics.updated_at
            age = (
                "never scraped"
                if updated_at == 0.0
                else (f"metrics {self._clock() - updated_at:.1f}s old")
            )
            logger.warning(
                "scrape of %s failed (%d in a row, %s): %s",
                endpoint.address,
                endpoint.scrape_failures,
                age,
                error,
                exc_info=exc_info,
            )
        endpoint.last_scrape_error = error
        if self._on_update is not None:
            self._on_update(endpoint)

    def _get_client(self) -> Http1Client:
        if self._client is None:
            if self._stopped:
                raise ScrapeError("scraper is stopped")
            self._client = Http1Client(
                max_body_bytes=self._max_body_bytes,
                # Uncompressed: the model server would gzip in the loop that streams
                # tokens. No proxy is ever used: pod addresses are dialled directly.
                headers={"Accept-Encoding": "identity", "User-Agent": "epp"},
            )
        return self._client

    # -- following the store ---------------------------------------------------------

    def _on_store_change(self, added: list[Endpoint], removed: list[Endpoint]) -> None:
        if self._stopped or not (added or removed):
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop and self._loop is not None:
            self._loop.call_soon_threadsafe(self._apply_change, list(added), list(removed))
        else:
            self._apply_change(added, removed)

    def _apply_change(self, added: list[Endpoint], removed: list[Endpoint]) -> None:
        if self._stopped:
            return
        for endpoint in removed:
            self._last_good.pop(endpoint, None)
            if self._client is not None:
                self._client.forget(endpoint.address)
            poller = self._polls.pop(endpoint, None)
            if poller is not None:
                poller.cancel()
                logger.info(
                    "stopped scraping %s: removed from the endpoint table", endpoint.address
                )
        new = [endpoint for endpoint in added if endpoint not in self._polls]
        for k, endpoint in enumerate(new):
            # Spread: the first at once, the others over one interval. Aligned: all at once.
            self._start_polling(endpoint, k / len(new) * self.interval_s if self._spread else 0.0)
            logger.info("started scraping %s", endpoint.address)

    # -- pacing ----------------------------------------------------------------------

    def poll_delay_s(self, failures: int) -> float:
        """Seconds from the start of one poll to the start of the next, after ``failures``
        failed scrapes in a row."""
        return self.pace.after_failures(failures)

    def _next_delay_s(self, poller: _Poller, busy: bool) -> float:
        failures = poller.endpoint.scrape_failures
        if failures or busy:
            poller.idle_polls = 0
            return self.pace.after_failures(failures)
        poller.idle_polls += 1
        return self.pace.while_idle(poller.idle_polls)

    def _start_polling(self, endpoint: Endpoint, first_delay_s: float) -> None:
        if endpoint.scrape_failures > 1:  # a failing endpoint keeps its back-off
            first_delay_s = max(first_delay_s, self.poll_delay_s(endpoint.scrape_failures))
        loop = asyncio.get_running_loop()
        poller = _Poller(endpoint)
        self._polls[endpoint] = poller
        if self._timers:
            poller.reply = functools.partial(self._on_reply, poller)
            poller.timer = loop.call_at(loop.time() + first_delay_s, self._poll, poller)
        else:
            poller.task = self._spawn(self._run(poller, first_delay_s), endpoint)

    def _spawn(self, coro: Coroutine[Any, Any, None], endpoint: Endpoint) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"scrape {endpoint.address}")
        self._live.add(task)
        task.add_done_callback(lambda done: self._forget(endpoint, done))
        return task

    def _forget(self, endpoint: Endpoint, task: asyncio.Task[None]) -> None:
        self._live.discard(task)
        poller = self._polls.get(endpoint)
        if poller is not None and poller.task is task:
            poller.task = None
            if not self._timers:
                del self._polls[endpoint]
        if not task.cancelled() and task.exception() is not None:
            logger.error("scrape task for %s died", endpoint.address, exc_info=task.exception())

    async def _run(self, poller: _Poller, first_delay_s: float) -> None:
        """The polling loop of one endpoint when a test paces it through ``sleep``."""
        endpoint = poller.endpoint
        if first_delay_s > 0:
            await self._sleep(first_delay_s)
        while True:
            started = self._clock()
            self.polls_total += 1
            busy = await self.scrape_once(endpoint)
            # Sleep out the rest of the delay; a slow poll is followed by the next at once.
            delay = self._next_delay_s(poller, busy)
            await self._sleep(max(0.0, delay - (self._clock() - started)))

    # -- timer-driven polls ----------------------------------------------------------

    def _poll(self, poller: _Poller) -> None:
        """A poll falls due: send the GET on the endpoint's idle connection, or else
        (none yet, or an injected ``fetch``) run this one poll as a task."""
        poller.timer = None
        poller.tick = None
        if self._polls.get(poller.endpoint) is not poller:
            return
        loop = self._loop
        assert loop is not None and poller.reply is not None
        poller.started = loop.time()
        self.polls_total += 1
        if self._fetch_with is None:
            client = self._get_client()
            address = poller.endpoint.address
            if client.start_get(address, self._target_query, self.timeout_s, poller.reply):
                return
        poller.task = self._spawn(self._poll_in_task(poller, reuse=True), poller.endpoint)

    def _on_reply(
        self, poller: _Poller, response: Response | None, error: BaseException | None
    ) -> None:
        """The answer to a :meth:`_poll` (called from the connection's data_received)."""
        endpoint = poller.endpoint
        if self._polls.get(endpoint) is not poller:
            # Removed meanwhile: the connection went back to the idle pool, close it.
            if self._client is not None and self._store.get(endpoint.address) is None:
                self._client.forget(endpoint.address)
            return
        try:
            if isinstance(error, ConnectionDropped):
                # The server closed the idle connection as we wrote: once more, fresh.
                poller.task = self._spawn(self._poll_in_task(poller, reuse=False), endpoint)
                return
            if error is not None:
                self._record_failure(endpoint, str(self._fetch_error(endpoint.address, error)))
                busy = False
            else:
                assert response is not None
                try:
                    body = self._body_of(endpoint.address, response)
                except ScrapeError as exc:
                    self._record_failure(endpoint, str(exc))
                    busy = False
                else:
                    busy = self._take(endpoint, body)
        except Exception:  # a bug: say so, and keep polling
            logger.exception("scrape of %s: internal error", endpoint.address)
            busy = False
        self._schedule(poller, busy)

    async def _poll_in_task(self, poller: _Poller, *, reuse: bool) -> None:
        busy = await self.scrape_once(poller.endpoint, reuse=reuse)
        if self._polls.get(poller.endpoint) is poller and not self._stopped:
            self._schedule(poller, busy)

    def _schedule(self, poller: _Poller, busy: bool) -> None:
        loop = self._loop
        assert loop is not None
        delay = self._next_delay_s(poller, busy)
        # From the start of this poll: a slow poll is followed by the next at once.
        due = poller.started + delay
        if self._spread:
            poller.timer = loop.call_at(due, self._poll, poller)
            return
        due = self._on_grid(due)  # the same float for every poller due at this tick
        poller.tick = due
        due_then = self._ticks.get(due)
        if due_then is None:
            self._ticks[due] = [poller]
            self._tick_timers[due] = loop.call_at(due, self._poll_tick, due)
        else:
            due_then.append(poller)

    def _poll_tick(self, due: float) -> None:
        """A tick of the grid: poll every endpoint still due then (one polled early, or
        removed, since it was put down for this tick has moved on)."""
        del self._tick_timers[due]
        for poller in self._ticks.pop(due):
            if poller.tick == due:
                self._poll(poller)

    def _on_grid(self, due: float) -> float:
        """The tick nearest ``due`` on a grid ``interval_s`` apart, shared by every
        endpoint, so that polls that drifted apart (a slow answer, a poll brought forward
        for new work) fall back in step."""
        origin = self._grid_origin
        if origin is None:
            self._grid_origin = origin = due
        return origin + round((due - origin) / self.interval_s) * self.interval_s

    def _watch(self) -> None:
        """Every interval: an idle endpoint that epp has just sent work to is polled now,
        not when its slowed-down pace comes round (see "Pacing")."""
        loop = self._loop
        assert loop is not None
        self._watch_timer = loop.call_later(self.interval_s, self._watch)
        self.poll_busy_now()

    def poll_busy_now(self) -> None:
        """Poll now every endpoint on the slowed idle pace that has requests in flight
        (the watcher's check, run at once when the scraper process learns of new work)."""
        if not self._timers or self._stopped:
            return
        for poller in list(self._polls.values()):
            if poller.idle_polls > 1 and poller.endpoint.inflight_requests > 0:
                timer = poller.timer
                if timer is not None or poller.tick is not None:  # else a poll is under way
                    if timer is not None:
                        timer.cancel()
                    poller.idle_polls = 0
                    self._poll(poller)  # off its tick: that tick's list skips it


class _Poller:
    """The polling state of one endpoint."""

    __slots__ = ("endpoint", "idle_polls", "reply", "started", "task", "tick", "timer")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.idle_polls = 0  # successful polls in a row that found it idle
        self.started = 0.0  # loop.time() when the current or last poll began
        self.timer: asyncio.TimerHandle | None = None  # the next poll, when one is due
        self.tick: float | None = None  # or the tick of the grid it is due at (in step)
        self.task: asyncio.Task[None] | None = None  # a poll (or the loop) run as a task
        self.reply: Callable[[Response | None, BaseException | None], None] | None = None

    def cancel(self) -> None:
        self.tick = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
