"""Fakes for the data-layer tests: a real HTTP model server, a manual ticker, a clock."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from epp.datalayer.scrape_process import ProcessScraper
from epp.datalayer.scraper import MetricsScraper
from epp.datalayer.store import EndpointStore
from tests.unit.datalayer.scripted_pod import Script, ScriptedPod

VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 5.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",num_gpu_blocks="27000",num_cpu_blocks="None"} 1.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="m"} 1.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 4.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="m"} 4.0
"""

VLLM_LEGACY_TEXT = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 0.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.75
"""

SGLANG_TEXT = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m"} 8.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 2.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m"} 0.5
sglang:cache_config_info{page_size="1",num_pages="120000"} 1.0
"""


class FakeModelServer:
    """An aiohttp server on 127.0.0.1 whose /metrics answer the test sets.

    ``status`` and ``body`` shape the answer; ``hang`` holds every answer until the test
    ends (or ``release()``), to drive the scraper's timeout; ``chunked`` sends the body
    in 64 KiB chunks without a Content-Length; ``on_request`` is called as each request
    arrives (to move a fake clock as if the poll took time).
    """

    def __init__(self, path: str = "/metrics") -> None:
        self.path = path
        self.body = VLLM_TEXT
        self.status = 200
        self.hang = False
        self.chunked = False
        self.on_request: Callable[[], None] | None = None
        self.requests = 0
        self.request_headers: list[dict[str, str]] = []
        self.request_queries: list[list[tuple[str, str]]] = []
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def release(self) -> None:
        self._release.set()

    async def close(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.on_request is not None:
            self.on_request()
        self.request_headers.append(dict(request.headers))
        self.request_queries.append(list(request.query.items()))
        if request.path != self.path:
            return web.Response(status=404, text="not found")
        if self.hang:
            await self._release.wait()
        if self.chunked:
            return await self._send_chunked(request)
        return web.Response(status=self.status, text=self.body, content_type="text/plain")

    async def _send_chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=self.status)
        response.content_type = "text/plain"
        response.enable_chunked_encoding()
        await response.prepare(request)
        body = self.body.encode()
        try:
            for start in range(0, len(body), 65536):
                await response.write(body[start : start + 65536])
            await response.write_eof()
        except ConnectionError:
            pass  # the scraper stopped reading: what a body limit does
        return response


@pytest_asyncio.fixture
async def make_server() -> AsyncIterator[Callable[..., Awaitable[FakeModelServer]]]:
    servers: list[FakeModelServer] = []

    async def make(path: str = "/metrics") -> FakeModelServer:
        server = FakeModelServer(path)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest_asyncio.fixture
async def model_server(
    make_server: Callable[..., Awaitable[FakeModelServer]],
) -> FakeModelServer:
    return await make_server()


@pytest_asyncio.fixture
async def scrapers() -> AsyncIterator[Callable[..., MetricsScraper]]:
    """Build scrapers that are always stopped (and their sessions closed) at the end."""
    made: list[MetricsScraper] = []

    def make(store: EndpointStore | None = None, **kwargs: Any) -> MetricsScraper:
        scraper = MetricsScraper(store if store is not None else EndpointStore(), **kwargs)
        made.append(scraper)
        return scraper

    yield make
    for scraper in made:
        await scraper.stop()


@pytest.fixture(params=["inline", "process"])
def scraper_kind(request: pytest.FixtureRequest) -> type[MetricsScraper] | type[ProcessScraper]:
    """The scraper on epp's loop, and the one in a child process: the tests of timer-driven
    polls (which need no test seam) hold for both."""
    return MetricsScraper if request.param == "inline" else ProcessScraper


class ManualTicker:
    """A ``sleep`` that returns only when the test calls :meth:`tick`."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._waiters: list[asyncio.Future[None]] = []

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    @property
    def sleeping(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    def tick(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticker() -> ManualTicker:
    return ManualTicker()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def closed_port_address() -> str:
    """An address nothing listens on (a port just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


async def _wait_until(predicate: Callable[[], bool], what: str, limit_s: float = 5.0) -> None:
    """Yield to the loop until ``predicate()`` holds; fail after ``limit_s`` (a hang guard,
    not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


WaitUntil = Callable[..., Awaitable[None]]


@pytest.fixture
def wait_until() -> WaitUntil:
    return _wait_until


@pytest.fixture
def payloads() -> dict[str, str]:
    """Exposition texts by engine: "vllm", "vllm-legacy", "sglang"."""
    return {"vllm": VLLM_TEXT, "vllm-legacy": VLLM_LEGACY_TEXT, "sglang": SGLANG_TEXT}


@pytest_asyncio.fixture
async def pods() -> AsyncIterator[Callable[[Script], Any]]:
    made: list[ScriptedPod] = []

    async def make(script: Script) -> ScriptedPod:
        pod = ScriptedPod(script)
        await pod.start()
        made.append(pod)
        return pod

    yield make
    for pod in made:
        await pod.close()
