"""``serve()``: wire discovery, scraping, scheduling and the ext_proc server, run until
told to stop, then shut down in order.

Shutdown (SIGTERM/SIGINT by default): gRPC health goes NOT_SERVING, the gRPC server
stops accepting streams and gives in-flight ones ``graceful_timeout_s`` to finish, then
the scraper and the metrics listener stop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from grpc_health.v1 import health
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from epp.config import Config
from epp.datalayer.scraper import MetricsScraper
from epp.datalayer.static_discovery import StaticDiscovery
from epp.datalayer.store import EndpointStore
from epp.director import Director
from epp.extproc.service import create_grpc_server, set_serving
from epp.observability import metrics
from epp.scheduling.registry import PluginRegistry, register_builtin_plugins
from epp.scheduling.scheduler import Scheduler, build_scheduler

__all__ = ["Running", "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Running:
    """What a caller of ``serve`` learns once epp accepts traffic: the ports bound (its
    config may ask for port 0) and the live endpoint table, for code that embeds epp."""

    grpc_port: int
    metrics_port: int | None
    store: EndpointStore
    director: Director


def build_scheduler_from_config(config: Config) -> Scheduler:
    registry = PluginRegistry()
    register_builtin_plugins(registry)
    return build_scheduler(config.scheduler, registry)


async def serve(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    on_ready: Callable[[Running], None] | None = None,
    scheduler: Scheduler | None = None,
) -> None:
    """Run epp until ``shutdown_trigger`` returns (default: SIGTERM or SIGINT).

    ``scheduler`` defaults to the one ``config`` describes.
    """
    store = EndpointStore()
    if scheduler is None:
        scheduler = build_scheduler_from_config(config)
    store.subscribe(lambda _added, removed: scheduler.on_endpoints_removed(removed))
    discovery = StaticDiscovery(store, config.endpoints)
    data = config.data_layer
    scraper = MetricsScraper(
        store,
        engine=data.engine,
        path=data.metrics_path,
        interval_s=data.refresh_metrics_interval_s,
        timeout_s=data.scrape_timeout_s,
    )
    director = Director(
        store,
        scheduler,
        unready_after_failures=data.unready_after_failures,
        destination_fallbacks=config.server.destination_fallbacks,
    )
    pool = metrics.PoolCollector(store.all, director.is_ready, data.metrics_staleness_s)
    metrics.REGISTRY.register(pool)
    health_servicer = health.aio.HealthServicer()
    server, grpc_port = create_grpc_server(
        director,
        address=f"{config.server.grpc_host}:{config.server.grpc_port}",
        max_body_bytes=config.server.max_body_bytes,
        health_servicer=health_servicer,
    )
    metrics_runner: web.AppRunner | None = None
    try:
        await discovery.start()
        await scraper.start()
        metrics_runner, metrics_port = await _start_metrics_listener(config, store, director)
        # Everything built so far lives as long as the process: keep the collector from
        # re-scanning it on every full collection, which shows up as tail latency.
        gc.collect()
        gc.freeze()
        await server.start()
        await set_serving(health_servicer, True)
        ready = sum(1 for ep in store.all() if director.is_ready(ep))
        log.info(
            "epp serving ext_proc on %s:%d (%d/%d endpoints ready; metrics on %s)",
            config.server.grpc_host, grpc_port, ready, len(store.all()),
            f"{config.server.metrics_host}:{metrics_port}" if metrics_port else "off",
        )
        if on_ready is not None:
            on_ready(Running(grpc_port, metrics_port, store, director))
        await (shutdown_trigger or _termination_signal)()
        log.info("shutting down: draining in-flight requests for up to %.1fs",
                 config.server.graceful_timeout_s)
        await set_serving(health_servicer, False)
    finally:
        await server.stop(config.server.graceful_timeout_s)
        await scraper.stop()
        await discovery.stop()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        metrics.REGISTRY.unregister(pool)
        log.info("epp stopped")


async def _termination_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _start_metrics_listener(
    config: Config, store: EndpointStore, director: Director
) -> tuple[web.AppRunner | None, int | None]:
    if config.server.metrics_port == 0:
        return None, None

    async def prometheus(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        ready = [ep.address for ep in store.all() if director.is_ready(ep)]
        return web.Response(
            text=f"{len(ready)}/{len(store.all())} endpoints ready\n", status=200 if ready else 503
        )

    app = web.Application()
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.server.metrics_host, config.server.metrics_port)
    await site.start()
    return runner, config.server.metrics_port
