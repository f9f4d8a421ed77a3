"""Active-active: two epp processes behind one Envoy (its epp cluster holds both, and it
spreads routing streams over them) share what they route through a real redis-server,
so a prefix one replica placed is found by the other, whichever gets the request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import ManagedProcess, free_port, loopback_serve_args, start_envoy, start_epp_module
from tests.integration.helpers import QWEN, chat, start_local_epp
from tests.integration.metrics_helpers import metric
from tests.redis_server import RedisServer, started

PREFIX = "You are a helpful assistant for a travel agency. Answer briefly. " * 20


@dataclass(frozen=True)
class Replicas:
    url: str  # Envoy's listener
    metrics_urls: tuple[str, str]  # each epp's /metrics


def _received_picks(replicas: Replicas) -> float:
    return sum(metric(url, "epp_sync_received_picks_total") for url in replicas.metrics_urls)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    log_dir: Path = tmp_path_factory.mktemp("replicas")
    pods = [f"127.0.0.1:{free_port()}" for _ in range(4)]
    sim_args = ["sim", "--decode-ms-per-token", "1", "--base-latency-ms", "1"]
    for pod in pods:
        sim_args += ["--pod", f"{pod}={QWEN}"]
    stopping: list[ManagedProcess | RedisServer] = []
    try:
        sim = start_epp_module("sim", sim_args, log_dir=log_dir)
        stopping.append(sim)
        for pod in pods:
            sim.wait_http(f"http://{pod}/health")
        redis = started(log_dir)
        stopping.append(redis)
        ports, metrics_urls = [], []
        for name in ("epp-a", "epp-b"):
            args = ["--sync-redis-url", redis.url, "--replica-id", name]
            for pod in pods:
                args += ["--endpoint", f"{pod}={QWEN}"]
            epp, grpc_port, metrics_port = start_local_epp(name, log_dir, *args)
            stopping.append(epp)
            ports.append(grpc_port)
            metrics_urls.append(f"http://127.0.0.1:{metrics_port}/metrics")
        envoy_ports = EnvoyPorts(
            listen_port=free_port(),
            admin_port=free_port(),
            epp_port=ports[0],
            more_epp_ports=(ports[1],),
        )
        envoy = start_envoy(
            envoy_bootstrap(envoy_ports), admin_port=envoy_ports.admin_port, log_dir=log_dir
        )
        stopping.append(envoy)
        result = Replicas(
            f"http://127.0.0.1:{envoy_ports.listen_port}", (metrics_urls[0], metrics_urls[1])
        )
        # Each replica hears the other before traffic starts.
        deadline = time.monotonic() + 15
        while any(metric(url, "epp_sync_peers") < 1 for url in metrics_urls):
            assert time.monotonic() < deadline, "the replicas never heard each other"
            time.sleep(0.05)
        yield result
    finally:
        for process in reversed(stopping):
            process.stop()


def test_both_replicas_route_and_a_prefix_stays_on_one_pod(replicas: Replicas) -> None:
    served: list[str] = []
    with httpx.Client(base_url=replicas.url, timeout=10.0) as client:
        for i in range(8):
            picks_before = _received_picks(replicas)
            response = client.post(
                "/v1/chat/completions", json=chat(QWEN, PREFIX + f"question {i}")
            )
            assert response.status_code == 200, response.text
            served.append(response.headers["x-sim-pod"])
            # The other replica has the pick before the next request is sent.
            deadline = time.monotonic() + 10
            while _received_picks(replicas) <= picks_before:
                assert time.monotonic() < deadline, "the pick never reached the other replica"
                time.sleep(0.02)
    # Each replica was told of picks the other made: Envoy used both.
    received = [metric(url, "epp_sync_received_picks_total") for url in replicas.metrics_urls]
    assert all(n > 0 for n in received), received
    # Envoy sent requests to both replicas, yet every one went where the first went.
    assert set(served) == {served[0]}, served
    assert all(metric(url, "epp_sync_connected") == 1 for url in replicas.metrics_urls)


def test_workers_share_one_port_and_each_other(tmp_path: Path) -> None:
    """``epp serve --workers 2``: two processes, each its own replica, both serving."""
    redis = started(tmp_path)
    grpc_port, metrics_port = free_port(), free_port()
    args = [
        *loopback_serve_args(grpc_port, metrics_port),
        "--workers",
        "2",
        "--sync-redis-url",
        redis.url,
        "--endpoint",
        f"127.0.0.1:{free_port()}={QWEN}",
    ]
    supervisor = start_epp_module("workers", args, log_dir=tmp_path)
    try:
        urls = [f"http://127.0.0.1:{metrics_port + i}/metrics" for i in range(2)]
        deadline = time.monotonic() + 30
        while True:
            supervisor.check_alive()
            try:
                if all(metric(url, "epp_sync_peers") == 1 for url in urls):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, supervisor.log_tail()
            time.sleep(0.1)
    finally:
        code = supervisor.stop()
        redis.stop()
    assert code == 0, supervisor.log_tail()
