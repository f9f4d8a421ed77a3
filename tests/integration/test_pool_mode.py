"""epp as an InferencePool's endpoint picker, end to end: the fake Kubernetes API server,
simulated vLLM pods on their own loopback IPs (one port, as pods in a cluster), epp in
pool mode over TLS, and a real Envoy. Pods are scaled up and down while requests flow."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import ManagedProcess, free_port, start_envoy, start_epp_module
from tests.integration.helpers import chat, pod_requests
from tests.integration.resilience import Traffic, wait_until
from tests.kube_fake import FakeKubeAPI, inference_model_rewrite, inference_pool_v1, pod

NS = "inference"
POOL = "llama"
LABELS = {"app": "vllm-llama"}
SERVED = "llama-v2"  # what the pods serve; clients ask for "llama" and are rewritten
GIE_X = "inference.networking.x-k8s.io/v1alpha2"


@dataclass
class Cluster:
    api: FakeKubeAPI
    kubeconfig: Path
    log_dir: Path
    port: int  # every pod's serving port, as an InferencePool's targetPort
    pods: dict[str, ManagedProcess] = field(default_factory=dict)  # ip -> process

    def start_pod(self, ip: str, models: str = SERVED, *sim_args: str) -> str:
        """A simulated pod on ``ip``; ``models`` as ``epp sim --pod`` takes them (a
        comma-separated list: the base model, then LoRA adapters); ``sim_args`` more
        ``epp sim`` flags."""
        address = f"{ip}:{self.port}"
        process = start_epp_module(
            f"pod-{ip}",
            [
                "sim",
                "--pod",
                f"{address}={models}",
                "--decode-ms-per-token",
                "2",
                "--prefill-ms-per-token",
                "0.001",
                "--base-latency-ms",
                "1",
                *sim_args,
            ],
            log_dir=self.log_dir,
        )
        process.wait_http(f"http://{address}/health")
        self.pods[ip] = process
        return address

    def stop_pod(self, ip: str) -> None:
        self.pods.pop(ip).stop()


def health(port: int, service: str = "inference-extension") -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError as exc:
            return f"error {exc.code().name}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    api = FakeKubeAPI().start_in_thread()
    cluster = Cluster(api, api.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path, free_port())
    try:
        yield cluster
    finally:
        for ip in list(cluster.pods):
            cluster.stop_pod(ip)
        api.stop()


def start_picker(
    cluster: Cluster, name: str, *extra: str, pool: str = POOL
) -> tuple[ManagedProcess, int, int]:
    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    process = start_epp_module(
        name,
        [
            "serve",
            "--pool-name",
            pool,
            "--pool-namespace",
            NS,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--grpc-host",
            "127.0.0.1",
            "--grpc-port",
            str(grpc_port),
            "--grpc-health-port",
            str(health_port),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(metrics_port),
            "--refresh-metrics-interval",
            "50ms",
            "--log-level",
            "debug",
            *extra,
        ],
        log_dir=cluster.log_dir,
    )
    return process, grpc_port, health_port


def test_pool_mode_routes_rewrites_and_follows_scaling(cluster: Cluster) -> None:
    api = cluster.api
    api.apply(inference_pool_v1(POOL, NS, LABELS, target_ports=[cluster.port]))
    api.apply(inference_model_rewrite("to-v2", NS, POOL, [("llama", {SERVED: 1})]))
    first = ["127.0.0.2", "127.0.0.3"]
    for ip in first:
        cluster.start_pod(ip)
        api.apply(pod(ip.replace(".", "-"), NS, ip, LABELS))

    epp, grpc_port, health_port = start_picker(cluster, "epp-pool")  # TLS: on by default
    ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=grpc_port)
    envoy = start_envoy(
        envoy_bootstrap(ports, response_body_mode="FULL_DUPLEX_STREAMED", epp_tls=True),
        admin_port=ports.admin_port,
        log_dir=cluster.log_dir,
        name="envoy-pool",
    )
    url = f"http://127.0.0.1:{ports.listen_port}"
    try:
        wait_until(lambda: health(health_port) == "SERVING", "epp to report SERVING")
        assert health(health_port, "liveness") == "SERVING"

        # The body's model is rewritten for the pod and restored for the client, streamed too.
        with httpx.Client(base_url=url, timeout=30) as client:
            response = client.post("/v1/chat/completions", json=chat("llama", "hi"))
            assert response.status_code == 200, response.text
            assert response.json()["model"] == "llama"
            served = response.headers["x-sim-pod"]
            # The pod serves only the rewritten name: asked directly for "llama" it says no.
            direct = httpx.post(
                f"http://{served}/v1/chat/completions", json=chat("llama", "hi"), timeout=10
            )
            assert direct.status_code == 404
            with client.stream(
                "POST", "/v1/chat/completions", json=chat("llama", "stream", stream=True)
            ) as streamed:
                events = [line for line in streamed.iter_lines() if line.startswith("data: {")]
            assert events and all(orjson.loads(e[6:])["model"] == "llama" for e in events)

        with Traffic(url, "llama") as traffic:
            wait_until(lambda: len(traffic.outcomes) >= 20, "traffic to flow")
            # Scale up: a new pod gets traffic once it is Ready.
            new_ip = "127.0.0.4"
            new_pod = cluster.start_pod(new_ip)
            api.apply(pod("new", NS, new_ip, LABELS, ready=False))
            time.sleep(0.5)  # an unready pod must get nothing meanwhile (checked below)
            assert not pod_requests(new_pod)
            api.apply(pod("new", NS, new_ip, LABELS))
            wait_until(lambda: len(pod_requests(new_pod)) >= 5, "the new pod to get traffic")

            # Scale down as Kubernetes does: the pod turns terminating, traffic leaves it,
            # then its process stops and the object goes.
            leaving_ip = first[0]
            leaving = f"{leaving_ip}:{cluster.port}"
            api.apply(pod(leaving_ip.replace(".", "-"), NS, leaving_ip, LABELS, terminating=True))
            wait_until(lambda: _quiet(leaving), "the terminating pod to drain")
            cluster.stop_pod(leaving_ip)
            api.delete("v1", "Pod", NS, leaving_ip.replace(".", "-"))
            after_removal = len(traffic.outcomes)
            wait_until(lambda: len(traffic.outcomes) >= after_removal + 20, "traffic to go on")

        statuses = Counter(outcome.status for outcome in traffic.outcomes)
        assert statuses == {200: len(traffic.outcomes)}, statuses
        assert {outcome.model for outcome in traffic.outcomes} == {"llama"}  # restored
        served_by = Counter(outcome.pod for outcome in traffic.outcomes)
        assert {new_pod, f"{first[1]}:{cluster.port}"} <= set(served_by)
    finally:
        envoy.stop()
        code = epp.stop()
        assert code == 0, epp.log_tail()


def _quiet(address: str) -> bool:
    """No request running or waiting on a simulated pod."""
    state = httpx.get(f"http://{address}/sim/state", timeout=5).json()
    return state["running"] == 0 and state["waiting"] == 0


def test_leader_election_hands_over_between_two_pickers(cluster: Cluster) -> None:
    api = cluster.api
    api.apply(inference_pool_v1(POOL, NS, LABELS, target_ports=[cluster.port]))
    cluster.start_pod("127.0.0.5")
    api.apply(pod("p", NS, "127.0.0.5", LABELS))
    election = [
        "--ha-enable-leader-election",
        "--leader-election-lease-duration",
        "2s",
        "--leader-election-renew-deadline",
        "1500ms",
        "--leader-election-retry-period",
        "200ms",
        "--secure-serving=false",
    ]
    first, _, first_health = start_picker(cluster, "epp-a", *election)
    second: ManagedProcess | None = None
    try:
        wait_until(lambda: health(first_health) == "SERVING", "the first picker to lead")
        second, _, second_health = start_picker(cluster, "epp-b", *election)
        wait_until(lambda: health(second_health, "liveness") == "SERVING", "epp-b to start")
        time.sleep(1.0)  # a few retry periods: the standby must stay unready
        assert health(second_health) == "NOT_SERVING"
        assert health(first_health) == "SERVING"
        lease = api.get("coordination.k8s.io/v1", "Lease", NS, f"epp-{POOL}")
        assert lease is not None

        assert first.stop() == 0  # SIGTERM: it releases the Lease on the way out
        wait_until(
            lambda: health(second_health) == "SERVING", "the standby to take over", timeout_s=10
        )
        lease = api.get("coordination.k8s.io/v1", "Lease", NS, f"epp-{POOL}")
        assert lease is not None and lease["spec"]["leaseTransitions"] >= 1
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0


def test_not_ready_until_the_pool_exists(cluster: Cluster) -> None:
    epp, _, health_port = start_picker(
        cluster, "epp-early", "--pool-sync-timeout", "300ms", "--secure-serving=false"
    )
    try:
        wait_until(lambda: health(health_port, "liveness") == "SERVING", "epp to start")
        wait_until(lambda: "not ready until it comes" in epp.log_tail(), "the late-sync warning")
        assert health(health_port) == "NOT_SERVING"
        cluster.api.apply(inference_pool_v1(POOL, NS, LABELS, target_ports=[cluster.port]))
        wait_until(lambda: health(health_port) == "SERVING", "epp to be ready once synced")
    finally:
        assert epp.stop() == 0, epp.log_tail()
