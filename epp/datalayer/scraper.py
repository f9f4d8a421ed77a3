"""Poll every endpoint's Prometheus ``/metrics`` and keep ``Endpoint.metrics`` current.

One asyncio task per endpoint (the collector loop of the reference EPP): it scrapes, then
sleeps out the rest of ``interval_s`` (longer while its scrapes fail), forever, until the
endpoint leaves the store or the scraper stops. All tasks share one
:class:`~epp.datalayer.http1_client.Http1Client`, so a steady poll reuses one keep-alive
TCP connection per endpoint.

On success the endpoint gets a new ``Metrics`` (replaced whole), ``scrape_failures = 0``
and ``last_scrape_error = None``. On any failure (connect error, timeout, HTTP status,
unparsable text, missing or out-of-range metrics, a page over the limits below)
``scrape_failures`` grows, ``last_scrape_error`` holds the reason, and the old ``Metrics``
stay, so ``Endpoint.is_fresh(staleness_s)`` turns false once they are ``staleness_s``
old. A failure is logged at WARNING only when its text differs from the previous one, and
the recovery at INFO, so a dead pod logs twice, not twenty times a second.

The scrapes run on the event loop that routes requests, so each must be cheap, and they
must not all fall due at once. What a poll costs (``benchmarks/bench_scrape_fleet.py``):
aiohttp's client took about 470 µs of CPU per poll, which made 256 pods at 50 ms more
than two cores; the small client of :mod:`~epp.datalayer.http1_client` writes one
request built once per pod and reads the answer in one callback. A page byte-for-byte
the same as the endpoint's last good one (an idle pod's) is not parsed again: its
metrics are the last ones, stamped with the new time. And the polls are spread over the
interval: the endpoints present at :meth:`MetricsScraper.start`, or added together, get
their first poll at evenly spaced offsets, so 256 pods make a poll every 0.2 ms rather
than a burst of 256 every 50 ms that a request arriving behind it would wait out.

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
- **Back-off.** After the n-th failure in a row the next poll starts
  ``interval_s * 2**(n-1)`` after the last one began, capped at ``max_backoff_s``: after
  1, 2, 3, 4, 5 failures 50, 100, 200, 400, 800 ms, then 1 s. So a pod whose every
  scrape fails costs one scrape a second, not twenty. The first retry keeps the normal
  pace: one lost poll is usually a blip, and readiness (``unready_after_failures``)
  counts on prompt retries; three failures take 150 ms instead of 100. The cap is how
  late a recovered pod can be noticed, since its first successful scrape makes it ready
  again: by default the smaller of 1 s and half the staleness threshold
  (:func:`default_max_backoff_s`), so a recovered pod is back within a second and every
  staleness window holds at least two polls. A success resets the pace at once.

Example::

    scraper = MetricsScraper(store, interval_s=0.05)
    await scraper.start()   # scrapes what the store holds now, then follows it
    ...
    await scraper.stop()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlencode

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.datalayer.errors import DataLayerError, MetricsExtractError, ScrapeError
from epp.datalayer.extract import detect_mapping, extract_metrics
from epp.datalayer.http1_client import Http1Client
from epp.datalayer.metric_mappings import AUTO, MetricMapping, mappings_for, wanted_names
from epp.datalayer.prometheus_text import parse_samples
from epp.datalayer.store import EndpointStore

__all__ = [
    "DEFAULT_INTERVAL_S",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_STALENESS_S",
    "MetricsScraper",
    "default_max_backoff_s",
    "default_timeout_s",
]

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.05  # the reference EPP's refresh interval
DEFAULT_STALENESS_S = 2.0  # what readers should pass to Endpoint.is_fresh
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


def default_timeout_s(interval_s: float) -> float:
    """The per-poll timeout used when none is given: ``min(1.0, max(0.5, interval_s))``.

    At least 0.5 s, because a busy model server answers ``/metrics`` from the same event
    loop that streams tokens and can be 100+ ms late without being unhealthy. At most 1 s,
    so a hung server counts as failing (and is logged) well before its data goes stale at
    2 s. Between the two it follows the interval.
    """
    return min(1.0, max(0.5, interval_s))


def default_max_backoff_s(staleness_s: float = DEFAULT_STALENESS_S) -> float:
    """The longest pause between polls of a failing endpoint: ``min(1.0, staleness_s / 2)``.

    It is also the longest a pod that recovers waits to be noticed. One second is well
    under what a client would notice; half the staleness threshold keeps at least two
    polls in every window after which metrics count as stale.
    """
    return min(1.0, staleness_s / 2)


class MetricsScraper:
    """Keeps the metrics of every endpoint in ``store`` fresh.

    ``engine`` is ``"auto"`` (recognize vLLM or SGLang per endpoint from what it exposes),
    an engine name from ``MAPPINGS``, or a custom :class:`MetricMapping`.

    ``max_body_bytes`` and ``max_samples`` bound the work of one scrape (0: no limit);
    ``max_backoff_s`` caps the back-off of a failing endpoint (default
    :func:`default_max_backoff_s`; a value at or below ``interval_s`` turns it off).
    See the module docstring for why each default is what it is.

    ``sleep`` and ``clock`` are the test seams: ``sleep`` paces the loop (default
    ``asyncio.sleep``) and ``clock`` stamps ``Metrics.updated_at`` (default
    ``time.monotonic``, which ``Endpoint.is_fresh`` compares against). ``fetch`` replaces
    the HTTP client: ``await fetch(address, target)`` returns the body of a 200 answer
    or raises :class:`ScrapeError` (the benchmarks put aiohttp there to compare).

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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
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
        self._last_good: dict[Endpoint, tuple[bytes, Metrics]] = {}
        self._sleep = sleep
        self._clock = clock
        self._tasks: dict[Endpoint, asyncio.Task[None]] = {}  # one per endpoint in the store
        self._live: set[asyncio.Task[None]] = set()  # also those cancelled but not yet done
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Scrape every endpoint the store holds once (so first requests have data), then
        keep one polling task per endpoint as the store changes."""
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
            if current and not self._stopped and endpoint not in self._tasks:
                # Spread over one interval (see the module docstring); the last waits
                # a whole interval, as a single endpoint does.
                self._start_task(endpoint, (k + 1) / len(initial) * self.interval_s)
        fresh = sum(1 for endpoint in initial if endpoint.scrape_failures == 0)
        logger.info(
            "metrics scraper started: %d/%d endpoints scraped, every %.3fs (timeout %.3fs)",
            fresh,
            len(initial),
            self.interval_s,
            self.timeout_s,
        )

    async def stop(self) -> None:
        """Cancel every polling task, wait for them (bounded), close the connections."""
        self._stopped = True
        self._tasks.clear()
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

    def scraped_addresses(self) -> frozenset[str]:
        """Addresses that have a polling task now (for tests and debug endpoints)."""
        return frozenset(endpoint.address for endpoint in self._tasks)

    # -- one scrape ------------------------------------------------------------------

    async def scrape_once(self, endpoint: Endpoint) -> None:
        """Poll ``endpoint`` once and record the outcome on it; never raises (but
        propagates cancellation)."""
        try:
            body = await self._fetch(endpoint.address)
            last = self._last_good.get(endpoint)
            if last is not None and last[0] == body:
                # The same bytes parsed and passed every check last time.
                old = last[1]
                metrics = Metrics(old.waiting_requests, old.running_requests,
                                  old.kv_cache_usage, old.kv_block_size, old.kv_num_blocks,
                                  updated_at=self._clock())
                mapping = None
            else:
                metrics, mapping = self._parse(body)
                if len(body) <= _MAX_REMEMBERED_BODY:
                    self._last_good[endpoint] = (body, metrics)
                else:
                    self._last_good.pop(endpoint, None)
        except DataLayerError as exc:
            self._record_failure(endpoint, str(exc))
            return
        except Exception as exc:  # a bug: count it and say so, but keep polling
            self._record_failure(endpoint, f"internal error: {exc!r}", exc_info=True)
            return
        first = endpoint.metrics.updated_at == 0.0
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

    def _parse(self, body: bytes) -> tuple[Metrics, MetricMapping]:
        text = body.decode("utf-8", errors="replace")
        samples = parse_samples(
            text, self._names, max_samples=self._max_samples, max_chars=self._max_sample_chars
        )
        mapping = detect_mapping(samples, self._mappings)
        if mapping is None:
            expected = " or ".join(sorted({m.waiting[0] for m in self._mappings}))
            raise MetricsExtractError(f"no known engine metrics found (looked for {expected})")
        return extract_metrics(samples, mapping, updated_at=self._clock()), mapping

    async def _fetch(self, address: str) -> bytes:
        """GET the metrics page of ``address``; every failure becomes a ScrapeError."""
        # Errors name the URL without the long name[] query, to keep logs readable.
        target = self._target + self._query
        if self._fetch_with is not None:
            return await self._fetch_with(address, target)
        client = self._get_client()
        try:
            response = await client.get(address, target, timeout_s=self.timeout_s)
        except TimeoutError as exc:
            url = f"http://{address}{self.path}"
            raise ScrapeError(f"GET {url}: timed out after {self.timeout_s:g}s") from exc
        except ScrapeError as exc:
            raise ScrapeError(f"GET http://{address}{self.path}: {exc}") from exc
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
            task = self._tasks.pop(endpoint, None)
            if task is not None:
                task.cancel()
                logger.info(
                    "stopped scraping %s: removed from the endpoint table", endpoint.address
                )
        new = [endpoint for endpoint in added if endpoint not in self._tasks]
        for k, endpoint in enumerate(new):
            # The first at once, the others spread over one interval.
            self._start_task(endpoint, k / len(new) * self.interval_s)
            logger.info("started scraping %s", endpoint.address)

    def _start_task(self, endpoint: Endpoint, first_delay_s: float) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run(endpoint, first_delay_s), name=f"scrape {endpoint.address}"
        )
        self._tasks[endpoint] = task
        self._live.add(task)
        task.add_done_callback(lambda done: self._forget(endpoint, done))

    def _forget(self, endpoint: Endpoint, task: asyncio.Task[None]) -> None:
        self._live.discard(task)
        if self._tasks.get(endpoint) is task:
            del self._tasks[endpoint]
        if not task.cancelled() and task.exception() is not None:
            logger.error("scrape task for %s died", endpoint.address, exc_info=task.exception())

    def poll_delay_s(self, failures: int) -> float:
        """Seconds from the start of one poll to the start of the next, after ``failures``
        failed scrapes in a row (see "Back-off" in the module docstring)."""
        if failures <= 1:
            return self.interval_s
        backoff = self.interval_s * 2.0 ** min(failures - 1, 32)
        return max(self.interval_s, min(self.max_backoff_s, backoff))

    async def _run(self, endpoint: Endpoint, first_delay_s: float) -> None:
        if endpoint.scrape_failures > 1:  # a failing endpoint keeps its back-off
            first_delay_s = max(first_delay_s, self.poll_delay_s(endpoint.scrape_failures))
        if first_delay_s > 0:
            await self._sleep(first_delay_s)
        while True:
            started = self._clock()
            await self.scrape_once(endpoint)
            # Sleep out the rest of the delay; a slow poll is followed by the next at once.
            delay = self.poll_delay_s(endpoint.scrape_failures)
            await self._sleep(max(0.0, delay - (self._clock() - started)))
