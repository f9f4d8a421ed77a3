"""Active-active: two epp processes behind one Envoy (its epp cluster holds both, and it
spreads routing streams over them) share what they route through a real redis-server,
so a prefix one replica placed is found by the other, whichever gets the request."""

from __future__ import annotations

import threading
import time
from collections import Counter
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


@dataclass(frozen=True)
class Rig:
    """Two replicas sharing state behind one Envoy, with their processes."""

    replicas: Replicas
    epps: tuple[ManagedProcess, ManagedProcess]


def _start_rig(log_dir: Path, stopping: list[ManagedProcess | RedisServer]) -> Rig:
    """Simulated pods, redis-server, epp-a and epp-b sharing through it, and Envoy over
    both; every process goes into ``stopping`` as it starts (the caller stops them)."""
    pods = [f"127.0.0.1:{free_port()}" for _ in range(4)]
    sim_args = ["sim", "--decode-ms-per-token", "1", "--base-latency-ms", "1"]
    for pod in pods:
        sim_args += ["--pod", f"{pod}={QWEN}"]
    sim = start_epp_module("sim", sim_args, log_dir=log_dir)
    stopping.append(sim)
    for pod in pods:
        sim.wait_http(f"http://{pod}/health")
    redis = started(log_dir)
    stopping.append(redis)
    epps, ports, metrics_urls = [], [], []
    for name in ("epp-a", "epp-b"):
        args = ["--sync-redis-url", redis.url, "--replica-id", name]
        for pod in pods:
            args += ["--endpoint", f"{pod}={QWEN}"]
        epp, grpc_port, metrics_port = start_local_epp(name, log_dir, *args)
        stopping.append(epp)
        epps.append(epp)
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
    # Each replica hears the other before traffic starts.
    deadline = time.monotonic() + 15
    while any(metric(url, "epp_sync_peers") < 1 for url in metrics_urls):
        assert time.monotonic() < deadline, "the replicas never heard each other"
        time.sleep(0.05)
    replicas = Replicas(
        f"http://127.0.0.1:{envoy_ports.listen_port}", (metrics_urls[0], metrics_urls[1])
    )
    return Rig(replicas, (epps[0], epps[1]))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    stopping: list[ManagedProcess | RedisServer] = []
    try:
        yield _start_rig(tmp_path_factory.mktemp("replicas"), stopping).replicas
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


@dataclass(frozen=True)
class Outcome:
    after_kill: bool  # sent once the killed replica was gone
    status: int | None  # None: the connection failed or was reset
    pod: str | None  # the simulated pod that served it
    error_code: str | None  # the code of an OpenAI-style JSON error


class SteadyLoad:
    """Clients sending shared-prefix chats through Envoy back to back, each waiting for
    its answer, until stopped; a replica is killed between two of their requests' starts,
    so each outcome knows which side of the kill it began on."""

    def __init__(self, url: str, clients: int) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._outstanding = 0
        self._killed = False
        self._stopping = threading.Event()
        self.outcomes: list[Outcome] = []
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self, index: int) -> None:
        with httpx.Client(base_url=self._url, timeout=30.0) as client:
            sent = 0
            while not self._stopping.is_set():
                with self._lock:
                    after_kill = self._killed
                    self._outstanding += 1
                body = chat(QWEN, PREFIX + f"client {index} question {sent}", max_tokens=40)
                try:
                    response = client.post("/v1/chat/completions", json=body)
                except httpx.HTTPError:
                    outcome = Outcome(after_kill, None, None, None)
                else:
                    outcome = Outcome(
                        after_kill,
                        response.status_code,
                        response.headers.get("x-sim-pod"),
                        _error_code(response),
                    )
                sent += 1
                with self._lock:
                    self._outstanding -= 1
                    self.outcomes.append(outcome)

    def kill(self, epp: ManagedProcess) -> int:
        """kill -9 ``epp`` while no request starts; how many were in flight then (an upper
        bound on those in flight on it)."""
        with self._lock:
            epp.process.kill()
            epp.process.wait(10)
            self._killed = True
            return self._outstanding

    def wait_for(self, *, after_kill: bool, count: int) -> None:
        deadline = time.monotonic() + 60
        while sum(o.after_kill == after_kill for o in list(self.outcomes)) < count:
            assert time.monotonic() < deadline, f"fewer than {count} requests came back"
            time.sleep(0.05)


def _error_code(response: httpx.Response) -> str | None:
    if response.status_code == 200:
        return None
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return str(code)


def test_kill_9_of_one_replica_fails_only_what_was_in_flight_on_it(tmp_path: Path) -> None:
    stopping: list[ManagedProcess | RedisServer] = []
    try:
        rig = _start_rig(tmp_path, stopping)
        survivor_url, victim_url = rig.replicas.metrics_urls
        with SteadyLoad(rig.replicas.url, clients=3) as load:
            load.wait_for(after_kill=False, count=30)
            # Envoy spread the streams: each replica has routed and told the other.
            assert metric(survivor_url, "epp_sync_received_picks_total") > 0
            assert metric(victim_url, "epp_sync_received_picks_total") > 0
            in_flight = load.kill(rig.epps[1])
            load.wait_for(after_kill=True, count=60)
            # The survivor forgets the dead replica (no goodbye: its expiry) ...
            deadline = time.monotonic() + 30
            while metric(survivor_url, "epp_sync_peers") > 0:
                assert time.monotonic() < deadline, "the dead replica was never forgotten"
                time.sleep(0.1)
            forgotten = sum(o.after_kill for o in list(load.outcomes))
            # ... and routes on as before, now alone.
            load.wait_for(after_kill=True, count=forgotten + 30)
        outcomes = list(load.outcomes)
    finally:
        for process in reversed(stopping):
            process.stop()
    before = [o for o in outcomes if not o.after_kill]
    after = [o for o in outcomes if o.after_kill]
    failed = [o for o in before if o.status != 200]
    # Only requests whose stream was on the killed replica may fail, with Envoy's answer
    # to a failed ext_proc stream (503 epp_unavailable) or a reset of one already
    # answering; none of those that began after the kill.
    assert len(failed) <= in_flight, (failed, in_flight)
    assert all(o.status in (None, 503) for o in failed), failed
    assert all(o.error_code in (None, "epp_unavailable") for o in failed), failed
    assert [o for o in after if o.status != 200] == []
    # Routing quality unchanged: the shared prefix stays on the pods that hold it. Under
    # load the replicas spread it over a few of the four (queue and KV scorers), the
    # same few before the kill (two replicas sharing) and after (the survivor alone,
    # on what it learnt from the dead one too): never a cold pod.
    pods_before = Counter(o.pod for o in before if o.status == 200)
    pods_after = Counter(o.pod for o in after)
    assert len(pods_before) < 4, pods_before
    assert set(pods_after) <= set(pods_before), (pods_before, pods_after)
