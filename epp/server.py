"""``serve()``: wire discovery, scraping, scheduling and the ext_proc server, run until
told to stop, then shut down in order.

Shutdown (SIGTERM/SIGINT by default): gRPC health goes NOT_SERVING, the gRPC server
stops accepting streams and gives in-flight ones ``graceful_timeout_s`` to finish, then
the scraper and the metrics listener stop.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection
from prometheus_client import CONTENT_TYPE_LATEST

from epp import __version__
from epp.config import (
    ROUTING_STRATEGIES,
    Config,
    build_model_selector,
    build_scheduler_from_config,
)
from epp.datalayer.kube_discovery import KubernetesDiscovery, PoolSpec
from epp.datalayer.scrape_pace import default_max_backoff_s
from epp.datalayer.scrape_process import ProcessScraper
from epp.datalayer.scraper import MetricsScraper
from epp.datalayer.static_discovery import StaticDiscovery
from epp.datalayer.store import EndpointStore
from epp.director import Director
from epp.extproc.body_budget import BodyBudget
from epp.extproc.service import create_grpc_server, create_health_server
from epp.k8s.client import make_client
from epp.k8s.leader import LeaderElector
from epp.observability import metrics, naming, request_metrics
from epp.observability.exposition import MetricsPage
from epp.observability.health import HealthReporter
from epp.observability.state_metrics import StateCollector
from epp.observability.sync_metrics import SyncCollector
from epp.pickapi.service import PickService
from epp.requestcontrol.admission import SaturationDetector
from epp.requestcontrol.fallback import ModelFallbacks
from epp.requestcontrol.health import PassiveHealth
from epp.requestcontrol.model_selection import ModelSelector
from epp.requestcontrol.objectives import Objectives
from epp.requestcontrol.pool_policies import PoolPolicies
from epp.requestcontrol.rewrite import ModelRewrites
from epp.scheduling.scheduler import Scheduler
from epp.sync.redis_sync import RedisSync
from epp.tls import load_certificate, reloading_credentials, self_signed_certificate
from epp.v1 import picker_pb2

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
    health_port: int | None = None


async def serve(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    on_ready: Callable[[Running], None] | None = None,
    scheduler: Scheduler | None = None,
    selector: ModelSelector | None = None,
) -> None:
    """Run epp until ``shutdown_trigger`` returns (default: SIGTERM or SIGINT).

    ``scheduler`` and ``selector`` (model selection) default to the ones ``config``
    describes.
    """
    store = EndpointStore()
    if scheduler is None:
        scheduler = build_scheduler_from_config(config)
    if selector is None:
        selector = build_model_selector(config)
    data = config.data_layer
    control = config.request_control
    director = Director(
        store,
        scheduler,
        unready_after_failures=data.unready_after_failures,
        destination_fallbacks=config.server.destination_fallbacks,
        saturation=SaturationDetector(
            queue_threshold=control.saturation_queue_threshold,
            kv_threshold=control.saturation_kv_threshold,
            staleness_s=data.metrics_staleness_s,
        ),
        pick_endpoints=not config.server.body_based_routing,
        objectives=Objectives(control.objectives),
        rewrites=ModelRewrites(honour_header=control.trust_model_rewrite_header),
        fallbacks=ModelFallbacks(control.model_fallbacks),
        health=PassiveHealth(
            initial_backoff_s=control.failure_backoff_s, max_backoff_s=control.failure_max_backoff_s
        ),
        max_inflight=control.endpoint_max_inflight,
        retry_after_s=control.retry_after_s,
        namespace=config.kubernetes.namespace if config.kubernetes.enabled else "",
        conformance_hooks=config.server.conformance_hooks,
        selector=selector,
    )
    if selector is not None:
        function = config.model_selection.function
        log.info(
            "model selection on: requests for %r get the model of the first of %d rules "
            "that matches%s, else %r",
            selector.selector_name,
            len(selector.rules),
            f" (after {function})" if function else "",
            selector.default_model,
        )
    store.subscribe(lambda _added, removed: director.scheduler.on_endpoints_removed(removed))
    store.subscribe(lambda _added, removed: director.health.forget(removed))
    sync = _replica_sync(config, store)
    sync_metrics: SyncCollector | None = None
    if sync is not None:
        store.subscribe(sync.endpoints_changed)
        director.share_load(sync)
        sync_metrics = SyncCollector(sync)
        metrics.REGISTRY.register(sync_metrics)
    health_servicer = health.aio.HealthServicer()
    kube = config.kubernetes
    reporter = HealthReporter(health_servicer, needs_leadership=kube.leader_election)
    parts = _KubernetesParts(config, store, director, reporter) if kube.enabled else None
    discovery: StaticDiscovery | KubernetesDiscovery = (
        parts.discovery if parts is not None else StaticDiscovery(store, config.endpoints)
    )
    scraper = _make_scraper(config, store)
    pool = metrics.PoolCollector(
        store.all,
        director.is_ready,
        data.metrics_staleness_s,
        pool_name=kube.pool_name or "static",
        in_backoff=director.health.in_backoff,
    )
    metrics.REGISTRY.register(pool)
    scraper_metrics = metrics.ScraperCollector(scraper)
    metrics.REGISTRY.register(scraper_metrics)
    state = StateCollector(store.all, lambda: director.scheduler)
    request_metrics.set_request_log(config.request_log)
    metrics.REGISTRY.register(state)
    metrics.MODEL_LABELS.max_series = config.max_model_series
    naming.set_legacy_names(config.legacy_metric_names)
    budget = BodyBudget(config.server.max_buffered_body_bytes)
    body_memory = metrics.BodyMemoryCollector(
        lambda: budget.held_bytes, lambda: budget.refused, budget.limit_bytes
    )
    metrics.REGISTRY.register(body_memory)
    info = metrics.InfoCollector(__version__)
    metrics.REGISTRY.register(info)
    grpc_host = config.grpc_host
    server, grpc_port = create_grpc_server(
        director,
        address=f"{grpc_host}:{config.server.grpc_port}",
        max_body_bytes=config.server.max_body_bytes,
        health_servicer=health_servicer,
        tls=_tls_credentials(config),
        inject_stream_usage=config.server.inject_stream_usage,
        servers_add_stream_usage=config.server.servers_add_stream_usage,
        body_budget=budget,
        max_receive_message_bytes=config.server.grpc_max_recv_msg_bytes,
        max_send_message_bytes=config.server.grpc_max_send_msg_bytes,
        reuse_port=config.server.workers > 1,
    )
    picks = PickService(
        director,
        max_body_bytes=config.server.max_body_bytes,
        timeout_s=config.server.pick_timeout_s,
        max_outstanding=config.server.pick_max_outstanding,
        body_budget=budget,
    )
    picks.add_to(server)
    _enable_reflection(server)
    if config.server.conformance_hooks:
        log.warning(
            "conformance hooks are on (--enable-conformance-hooks): any client can choose "
            "its endpoint with test-epp-endpoint-selection; for conformance tests only"
        )
    if not config.secure_serving and not _is_loopback(grpc_host):
        log.warning(
            "ext_proc is served without TLS on %s:%d: whoever can reach it can read "
            "requests and choose where they go; use --secure-serving, or keep the "
            "port reachable only by the gateway (a NetworkPolicy)",
            grpc_host,
            grpc_port,
        )
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    if config.server.grpc_health_port:
        health_server, health_port = create_health_server(
            health_servicer,
            address=f"{grpc_host}:{config.server.grpc_health_port}",
            reuse_port=config.server.workers > 1,
        )
    metrics_runner: web.AppRunner | None = None
    try:
        await discovery.start()
        if parts is not None:
            await parts.start()
        await scraper.start()
        if sync is not None:
            await sync.start()
        metrics_runner, metrics_port = await _start_metrics_listener(
            config, store, director, reporter
        )
        await reporter.publish()  # NOT_SERVING until synced (and leading)
        await server.start()
        if health_server is not None:
            await health_server.start()
        if parts is not None:
            await parts.wait_synced()
        else:
            reporter.synced = True
            await reporter.publish()
        # Everything built so far lives as long as the process: keep the collector from
        # re-scanning it on every full collection, which shows up as tail latency.
        gc.collect()
        gc.freeze()
        ready = sum(1 for ep in store.all() if director.is_ready(ep))
        log.info(
            "epp serving ext_proc on %s:%d%s (%s; %d/%d endpoints ready; health on %s; "
            "metrics on %s)",
            grpc_host,
            grpc_port,
            " with TLS" if config.secure_serving else "",
            parts.discovery.what
            if parts is not None
            else ("body-based routing" if config.server.body_based_routing else "static endpoints"),
            ready,
            len(store.all()),
            health_port or "off",
            f"{config.server.metrics_host}:{metrics_port}" if metrics_port else "off",
        )
        if on_ready is not None:
            on_ready(Running(grpc_port, metrics_port, store, director, health_port))
        await (shutdown_trigger or _termination_signal)()
        log.info(
            "shutting down: draining in-flight requests for up to %.1fs",
            config.server.graceful_timeout_s,
        )
        reporter.stopping = True
        await reporter.publish()
        if parts is not None:
            await parts.stop_leading()
        if config.server.drain_timeout_s > 0:
            # NOT_SERVING now, but a gateway may send here until it sees the pod leave.
            log.info(
                "still accepting ext_proc streams for %.1fs (--drain-timeout)",
                config.server.drain_timeout_s,
            )
            await asyncio.sleep(config.server.drain_timeout_s)
    finally:
        await server.stop(config.server.graceful_timeout_s)
        picks.close()
        if health_server is not None:
            await health_server.stop(0)
        if sync is not None:
            await sync.stop()
        await scraper.stop()
        await discovery.stop()
        if parts is not None:
            await parts.stop()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        metrics.REGISTRY.unregister(pool)
        metrics.REGISTRY.unregister(scraper_metrics)
        metrics.REGISTRY.unregister(state)
        metrics.REGISTRY.unregister(body_memory)
        metrics.REGISTRY.unregister(info)
        if sync_metrics is not None:
            metrics.REGISTRY.unregister(sync_metrics)
        log.info("epp stopped")


def _replica_sync(config: Config, store: EndpointStore) -> RedisSync | None:
    sync = config.sync
    if sync.redis_url is None:
        return None
    return RedisSync(
        sync.redis_url,
        store,
        channel=sync.channel,
        replica_id=sync.replica_id,
        batch_s=sync.batch_s,
        heartbeat_s=sync.heartbeat_s,
        expire_s=sync.expire_s,
    )


class _KubernetesParts:
    """Discovery, pool policies, routing-strategy switching and leader election."""

    def __init__(
        self, config: Config, store: EndpointStore, director: Director, reporter: HealthReporter
    ) -> None:
        kube = config.kubernetes
        self._config = config
        self._director = director
        self._reporter = reporter
        self._client = make_client(kube.kubeconfig)
        self._strategy: str | None = None
        self._late_sync: asyncio.Task[None] | None = None
        self.discovery = KubernetesDiscovery(
            store,
            self._client,
            namespace=kube.namespace,
            pool_name=kube.pool_name,
            pool_group=kube.pool_group,
            selector=dict(kube.endpoint_selector) if kube.endpoint_selector else None,
            target_ports=kube.endpoint_target_ports,
            on_pool_change=self._on_pool_change,
        )
        self.policies: PoolPolicies | None = None
        self.elector: LeaderElector | None = None
        if kube.pool_name is not None:
            self.policies = PoolPolicies(
                self._client,
                namespace=kube.namespace,
                pool_name=kube.pool_name,
                objectives=director.objectives,
                rewrites=director.rewrites,
            )
            if kube.leader_election:
                self.elector = LeaderElector(
                    self._client,
                    namespace=kube.namespace,
                    lease_name=kube.lease_name or f"epp-{kube.pool_name}",
                    # client-go's form: unique even for two replicas on one host.
                    identity=f"{os.environ.get('POD_NAME') or socket.gethostname()}_"
                    f"{uuid.uuid4().hex[:8]}",
                    lease_duration_s=kube.lease_duration_s,
                    renew_deadline_s=kube.renew_deadline_s,
                    retry_period_s=kube.retry_period_s,
                    on_change=lambda leader: reporter.update(leader=leader),
                )

    async def start(self) -> None:
        if self.policies is not None:
            await self.policies.start()
        if self.elector is not None:
            self.elector.start()

    async def wait_synced(self) -> None:
        """Wait a while for the first complete view; if it is late, report ready when it
        comes, without holding up the rest of start-up (or a shutdown)."""
        timeout = self._config.kubernetes.sync_timeout_s
        if await self.discovery.wait_synced(timeout):
            self._reporter.update(synced=True)
            return
        log.warning(
            "%s: no complete view after %.0fs (is the API server reachable, and does "
            "the pool exist?); not ready until it comes",
            self.discovery.what,
            timeout,
        )

        async def report_when_synced() -> None:
            await self.discovery.wait_synced(None)
            log.info("%s: synced; ready", self.discovery.what)
            self._reporter.update(synced=True)

        self._late_sync = asyncio.create_task(report_when_synced())

    async def stop_leading(self) -> None:
        if self.elector is not None:
            await self.elector.stop()

    async def stop(self) -> None:
        if self._late_sync is not None:
            self._late_sync.cancel()
        await self.stop_leading()
        if self.policies is not None:
            await self.policies.stop()

    def _on_pool_change(self, pool: PoolSpec | None) -> None:
        strategy = pool.routing_strategy if pool is not None else None
        if pool is None or strategy == self._strategy:
            return
        self._strategy = strategy
        known = strategy
        if strategy is not None and strategy not in ROUTING_STRATEGIES:
            log.error(
                "%s: unknown routing strategy %r (expected %s); keeping the configured profile",
                self.discovery.what,
                strategy,
                " or ".join(ROUTING_STRATEGIES),
            )
            known = None
        self._director.set_scheduler(build_scheduler_from_config(self._config, known))
        log.info("%s: routing strategy %s", self.discovery.what, strategy or "(configured)")


def _enable_reflection(server: grpc.aio.Server) -> None:
    """gRPC server reflection over every service on the port, so generic tools (grpcurl,
    Postman) can call the Pick API without the .proto."""
    names = (
        picker_pb2.DESCRIPTOR.services_by_name["EndpointPicker"].full_name,
        "envoy.service.ext_proc.v3.ExternalProcessor",
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)


def _make_scraper(config: Config, store: EndpointStore) -> MetricsScraper | ProcessScraper:
    data = config.data_layer
    kind = ProcessScraper if data.scrape_mode == "process" else MetricsScraper
    return kind(
        store,
        engine=data.engine,
        path=data.metrics_path,
        interval_s=data.refresh_metrics_interval_s,
        timeout_s=data.scrape_timeout_s,
        max_body_bytes=data.scrape_max_bytes,
        max_samples=data.scrape_max_samples,
        max_backoff_s=default_max_backoff_s(data.metrics_staleness_s),
        max_idle_interval_s=data.scrape_idle_interval_s,
    )


def _tls_credentials(config: Config) -> grpc.ServerCredentials | None:
    if not config.secure_serving:
        return None
    cert_path = config.server.cert_path
    if cert_path and config.server.cert_reload:
        return reloading_credentials(cert_path)
    if config.server.cert_reload:
        log.warning(
            "--enable-cert-reload needs --cert-path; the self-signed certificate "
            "made at start is served"
        )
    pair = load_certificate(cert_path) if cert_path else self_signed_certificate()
    return grpc.ssl_server_credentials([pair])


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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
    config: Config, store: EndpointStore, director: Director, reporter: HealthReporter
) -> tuple[web.AppRunner | None, int | None]:
    if config.server.metrics_port == 0:
        return None, None
    page = MetricsPage(metrics.REGISTRY)

    async def prometheus(_request: web.Request) -> web.Response:
        return web.Response(body=await page.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        ready = [ep.address for ep in store.all() if director.is_ready(ep)]
        text = f"{len(ready)}/{len(store.all())} endpoints ready"
        if not reporter.ready:
            text += "; " + (
                "shutting down"
                if reporter.stopping
                else "not synced"
                if not reporter.synced
                else "not the leader"
            )
        ok = reporter.ready and (bool(ready) or config.server.body_based_routing)
        return web.Response(text=text + "\n", status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.server.metrics_host, config.server.metrics_port)
    await site.start()
    return runner, config.server.metrics_port
