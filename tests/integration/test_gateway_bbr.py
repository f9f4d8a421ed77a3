"""Two pools behind one gateway, as deploy/gateway/ sets them up, in one local Envoy: a
gateway-level epp in --body-based-routing mode names the model, routes match
X-Gateway-Model-Name, and each route's own epp (a per-route ext_proc override, as a
Gateway API implementation configures an InferencePool's picker) picks the pod."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import ManagedProcess, free_port, loopback_serve_args, start_envoy, start_epp_module
from tests.integration.helpers import chat

MODEL_A, MODEL_B = "llama-3-8b", "qwen-2-7b"
EXT_PROC = "envoy.filters.http.ext_proc"
EXT_PROC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"


@dataclass(frozen=True)
class Gateway:
    url: str
    pods_a: tuple[str, ...]
    pod_b: str


def gateway_bootstrap(ports: EnvoyPorts, *, bbr_port: int, picker_b_port: int) -> dict[str, Any]:
    """epp's standalone bootstrap, turned into a two-pool gateway."""
    bootstrap = envoy_bootstrap(ports)
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    config = manager["typed_config"]
    picker = next(f for f in config["http_filters"] if f["name"] == EXT_PROC)
    # The body-based router runs first, on every request; it only needs the request.
    bbr = copy.deepcopy(picker)
    bbr["name"] = "body-based-router"
    bbr["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = "bbr"
    bbr["typed_config"]["processing_mode"].update(
        response_header_mode="SKIP", response_body_mode="NONE", response_trailer_mode="SKIP"
    )
    config["http_filters"].insert(0, bbr)

    (route_a,) = config["route_config"]["virtual_hosts"][0]["routes"]
    route_a["match"]["headers"] = [
        {"name": "x-gateway-model-name", "string_match": {"exact": MODEL_A}}
    ]
    route_b = copy.deepcopy(route_a)
    route_b["match"]["headers"][0]["string_match"]["exact"] = MODEL_B
    route_b["typed_per_filter_config"] = {
        EXT_PROC: {
            "@type": EXT_PROC_PER_ROUTE,
            "overrides": {
                "grpc_service": {"envoy_grpc": {"cluster_name": "epp_b"}, "timeout": "10s"}
            },
        }
    }
    config["route_config"]["virtual_hosts"][0]["routes"] = [route_a, route_b]

    clusters = bootstrap["static_resources"]["clusters"]
    epp_cluster = next(c for c in clusters if c["name"] == "epp")
    for name, port in (("bbr", bbr_port), ("epp_b", picker_b_port)):
        cluster = copy.deepcopy(epp_cluster)
        cluster["name"] = cluster["load_assignment"]["cluster_name"] = name
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"]["port_value"] = port
        clusters.append(cluster)
    return bootstrap


def start_picker(name: str, log_dir: Path, *args: str) -> tuple[ManagedProcess, int]:
    grpc_port, metrics_port = free_port(), free_port()
    process = start_epp_module(
        name,
        [
            *loopback_serve_args(grpc_port, metrics_port),
            *args,
        ],
        log_dir=log_dir,
    )
    process.wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
    return process, grpc_port


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
        picker_a, port_a = start_picker(
            "picker-a", log_dir, *(arg for pod in pods_a for arg in ("--endpoint", pod))
        )
        picker_b, port_b = start_picker("picker-b", log_dir, "--endpoint", pod_b)
        bbr, port_bbr = start_picker("bbr", log_dir, "--body-based-routing")
        started += [picker_a, picker_b, bbr]
        ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=port_a)
        started.append(
            start_envoy(
                gateway_bootstrap(ports, bbr_port=port_bbr, picker_b_port=port_b),
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
