"""Two pools behind one gateway, as deploy/gateway/ sets them up, in one local Envoy: a
gateway-level epp in --body-based-routing mode names the model, routes match
X-Gateway-Model-Name, and each route's own epp (a per-route ext_proc override, as a
Gateway API implementation configures an InferencePool's picker) picks the pod
(``envoy_bootstrap(model_routes=...)``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import ManagedProcess, free_port, start_envoy, start_epp_module
from tests.integration.helpers import chat, start_local_epp

MODEL_A, MODEL_B = "llama-3-8b", "qwen-2-7b"


@dataclass(frozen=True)
class Gateway:
    url: str
    pods_a: tuple[str, ...]
    pod_b: str


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log_dir = tmp_path_factory.mktemp("gateway")
    pods_a = tuple(f"127.0.0.1:{free_port()}" for _ in range(2))
    pod_b = f"127.0.0.1:{free_port()}"
    started: list[ManagedProcess] = []
    try:
        sim = start_epp_module(
            "sim",
            [
                "sim",
                *(arg for pod in pods_a for arg in ("--pod", f"{pod}={MODEL_A}")),
                "--pod",
                f"{pod_b}={MODEL_B}",
                "--decode-ms-per-token",
                "1",
            ],
            log_dir=log_dir,
        )
        started.append(sim)
        for pod in (*pods_a, pod_b):
            sim.wait_http(f"http://{pod}/health")
        picker_a, port_a, _ = start_local_epp(
            "picker-a", log_dir, *(arg for pod in pods_a for arg in ("--endpoint", pod))
        )
        picker_b, port_b, _ = start_local_epp("picker-b", log_dir, "--endpoint", pod_b)
        bbr, port_bbr, _ = start_local_epp("bbr", log_dir, "--body-based-routing")
        started += [picker_a, picker_b, bbr]
        ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=port_bbr)
        started.append(
            start_envoy(
                envoy_bootstrap(
                    ports,
                    response_body_mode="NONE",
                    model_routes={MODEL_A: port_a, MODEL_B: port_b},
                ),
                admin_port=ports.admin_port,
                log_dir=log_dir,
                name="envoy-gateway",
            )
        )
        yield Gateway(f"http://127.0.0.1:{ports.listen_port}", pods_a, pod_b)
    finally:
        for process in reversed(started):
            process.stop()


def test_each_model_reaches_its_own_pool(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        served_a = set()
        for n in range(6):
            response = client.post(
                "/v1/chat/completions", json=chat(MODEL_A, f"a {n}", max_tokens=2)
            )
            assert response.status_code == 200, response.text
            assert response.json()["model"] == MODEL_A
            served_a.add(response.headers["x-sim-pod"])
        assert served_a <= set(gateway.pods_a) and served_a
        response = client.post(
            "/v1/completions", json={"model": MODEL_B, "prompt": "b", "max_tokens": 2}
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-sim-pod"] == gateway.pod_b


def test_a_model_no_route_matches_is_not_found(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=chat("no-such-model", "x"), timeout=30
    )
    assert response.status_code == 404  # Envoy: no route for that X-Gateway-Model-Name
