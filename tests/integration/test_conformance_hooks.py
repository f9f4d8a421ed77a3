"""The Gateway API Inference Extension conformance hooks, through a real Envoy.

As the GIE suite drives a picker: a pool of pods serving one model, requests that name
their pod in ``test-epp-endpoint-selection``, and the served endpoint read back from
``x-conformance-test-served-endpoint`` (Envoy reports it to epp in ``envoy.lb`` metadata,
as ``epp envoy-config`` sets up). The gRPC health services the suite's probes ask for
answer SERVING.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Stack
from tests.integration.helpers import GEMMA, QWEN, chat
from tests.integration.resilience import Rig
from tests.integration.test_pool_mode import health

pytestmark = pytest.mark.integration

MODEL = "conformance-fake-model"
SELECT = "test-epp-endpoint-selection"
SERVED = "x-conformance-test-served-endpoint"


@dataclass
class Conformance:
    url: str
    pods: list[str]
    grpc_port: int


# The hooks turned on by the flag, or by the config the suite itself deploys (its two
# test-only plugins, in deploy/reference-configs/).
HOOKS = {
    "flag": ("--enable-conformance-hooks",),
    "suite-config": (
        "--config-file",
        str(Path(__file__).resolve().parents[2] / "deploy/reference-configs/gie-conformance.yaml"),
    ),
}


@pytest.fixture(params=sorted(HOOKS))
def conformance(rig: Rig, request: pytest.FixtureRequest) -> Iterator[Conformance]:
    pods = rig.sims("pods", [MODEL] * 3)
    # As in the suite: one pool, every pod serving its model (no model lists).
    grpc_port = rig.start_epp(dict.fromkeys(pods), *HOOKS[request.param])
    yield Conformance(rig.start_envoy(grpc_port), pods, grpc_port)


def post(http: httpx.Client, selection: str | None = None) -> httpx.Response:
    headers = {SELECT: selection} if selection is not None else {}
    body = {"model": MODEL, "prompt": "Write as if you were a critic: San Francisco"}
    return http.post("/v1/completions", json={**body, "max_tokens": 2}, headers=headers)


def test_each_request_is_served_by_the_pod_it_names(conformance: Conformance) -> None:
    with httpx.Client(base_url=conformance.url, timeout=30) as http:
        for pod in conformance.pods:
            for _ in range(3):
                response = post(http, pod)
                assert response.status_code == 200, response.text
                assert response.headers["x-sim-pod"] == pod
                assert response.headers[SERVED] == pod


def test_requests_stay_within_the_pods_named(conformance: Conformance) -> None:
    named = conformance.pods[:2]
    with httpx.Client(base_url=conformance.url, timeout=30) as http:
        served = {post(http, ", ".join(named)).headers["x-sim-pod"] for _ in range(20)}
        assert served <= set(named)
        # A bare IP names every endpoint at it: here, every pod.
        anywhere = {post(http, "127.0.0.1").headers["x-sim-pod"] for _ in range(20)}
        assert anywhere <= set(conformance.pods)
        # Without the header, the request is routed as usual.
        response = post(http)
        assert response.status_code == 200
        assert response.headers[SERVED] == response.headers["x-sim-pod"]


def test_a_selection_that_names_no_pod_is_refused(conformance: Conformance) -> None:
    with httpx.Client(base_url=conformance.url, timeout=30) as http:
        response = post(http, "10.255.255.1,127.0.0.1:1")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_ready_endpoint"
        too_many = ",".join(f"10.0.{i // 250}.{i % 250}" for i in range(65))
        response = post(http, too_many)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_header"


def test_health_services_the_suite_probes_answer_serving(conformance: Conformance) -> None:
    # The ext_proc port serves gRPC health too (no separate health port here).
    for service in (
        "inference-extension",
        "readiness",
        "liveness",
        "envoy.service.ext_proc.v3.ExternalProcessor",
        "",
    ):
        assert health(conformance.grpc_port, service) == "SERVING", service


def test_without_the_hooks_the_header_steers_nothing(stack: Stack, client: httpx.Client) -> None:
    # The session's epp runs without --enable-conformance-hooks: a client cannot pick
    # its pod, and nothing is echoed.
    for _ in range(3):
        response = client.post(
            "/v1/chat/completions",
            json=chat(QWEN, "hi", max_tokens=2),
            headers={SELECT: stack.fleet.gemma_pod},
        )
        assert response.status_code == 200
        assert response.headers["x-sim-pod"] in stack.fleet.qwen_pods
        assert SERVED not in response.headers
    response = client.post(
        "/v1/chat/completions",
        json=chat(GEMMA, "hi", max_tokens=2),
        headers={SELECT: stack.fleet.qwen_pods[0]},
    )
    assert response.headers["x-sim-pod"] == stack.fleet.gemma_pod
