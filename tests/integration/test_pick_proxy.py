"""The Pick API end to end, no Envoy: the README's forwarding proxy
(examples/pick_proxy.py) asks the session's epp where each request goes and sends it to
the simulated pods. Routing must be what it is through Envoy (test_routing.py): a long
shared prefix sticks to its pod, a pod with a queue is avoided, concurrent work spreads,
and the load epp counts returns to zero once the proxy reports each request's end."""

from __future__ import annotations

import concurrent.futures
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from epp.stack import ManagedProcess, free_port
from tests.integration.conftest import Fleet
from tests.integration.helpers import GEMMA, GHOST, QWEN, chat, queue_on
from tests.integration.metrics_helpers import metric, wait_for_metric

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "examples" / "pick_proxy.py"


@pytest.fixture(scope="module")
def proxy(epp_process: tuple[ManagedProcess, int, int], log_dir: Path) -> Iterator[str]:
    _, grpc_port, _ = epp_process
    port = free_port()
    process = ManagedProcess(
        "pick-proxy",
        [sys.executable, str(PROXY), "--epp", f"127.0.0.1:{grpc_port}", "--port", str(port)],
        log_dir=log_dir,
        env={"PYTHONPATH": str(ROOT)},  # this checkout's epp, as the example's reader has it
    )
    try:
        process.wait_http(f"http://127.0.0.1:{port}/", status=405)  # it serves POST only
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


@pytest.fixture
def client(proxy: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy, timeout=60.0) as http:
        yield http


@pytest.fixture
def metrics_url(epp_process: tuple[ManagedProcess, int, int]) -> str:
    return f"http://127.0.0.1:{epp_process[2]}/metrics"


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-sim-pod"]


def inflight(metrics_url: str) -> float:
    return metric(metrics_url, "epp_endpoint_inflight_requests")


def test_requests_reach_a_pod_of_their_model(client: httpx.Client, fleet: Fleet) -> None:
    response = client.post("/v1/chat/completions", json=chat(QWEN, "hi"))
    assert served_by(response) in fleet.qwen_pods
    assert response.json()["model"] == QWEN
    completion = client.post("/v1/completions", json={"model": GEMMA, "prompt": "Once"})
    assert served_by(completion) == fleet.gemma_pod


def test_same_long_prefix_goes_to_the_same_pod(client: httpx.Client) -> None:
    for _ in range(6):  # with two pods, chance alone keeps them together once in 2**18
        system = f"You are assistant {uuid.uuid4().hex}. " + "Answer briefly and cite. " * 60
        served = [
            served_by(
                client.post(
                    "/v1/chat/completions",
                    json={
                        "model": QWEN,
                        "max_tokens": 2,
                        "messages": [
                            {"role": "system", "content": system},
                            {"role": "user", "content": f"Question {turn}?"},
                        ],
                    },
                )
            )
            for turn in range(4)
        ]
        assert served == [served[0]] * len(served), system[:40]


def test_pod_with_a_long_queue_is_avoided(client: httpx.Client, fleet: Fleet) -> None:
    busy, idle = fleet.qwen_pods
    with queue_on(busy, QWEN):
        served = [
            served_by(client.post("/v1/chat/completions", json=chat(QWEN, f"q{i}")))
            for i in range(5)
        ]
    assert served == [idle] * 5


def test_concurrent_requests_spread_and_their_load_is_released(
    proxy: str, fleet: Fleet, metrics_url: str
) -> None:
    assert wait_for_metric(metrics_url, "epp_endpoint_inflight_requests", 0.0) == 0.0
    labels = {"model_name": QWEN, "target_model_name": QWEN}
    routed = metric(metrics_url, "llm_d_epp_request_total", **labels)

    def send(i: int) -> str:
        # Distinct prompts: nothing but load tells the pods apart.
        body = chat(QWEN, f"{uuid.uuid4().hex} task {i}", max_tokens=150)
        return served_by(httpx.post(f"{proxy}/v1/chat/completions", json=body, timeout=60.0))

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        served = list(pool.map(send, range(8)))
    counts = {pod: served.count(pod) for pod in fleet.qwen_pods}
    assert min(counts.values()) >= 2, counts  # in-flight picks steer the next ones away
    assert metric(metrics_url, "llm_d_epp_request_total", **labels) - routed == 8
    # Every request's Finish came: epp counts nothing in flight any more.
    assert wait_for_metric(metrics_url, "epp_endpoint_inflight_requests", 0.0) == 0.0


def test_load_is_held_while_a_response_streams(client: httpx.Client, metrics_url: str) -> None:
    request = chat(QWEN, "long answer", stream=True, max_tokens=200)
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200
        pod = response.headers["x-sim-pod"]
        lines = response.iter_lines()
        next(lines)
        held = metric(metrics_url, "epp_endpoint_inflight_requests", endpoint=pod)
        assert held == 1
        assert sum(1 for _ in lines) > 100
    assert wait_for_metric(metrics_url, "epp_endpoint_inflight_requests", 0.0) == 0.0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"model": "no-such-model", "prompt": "x"}', 404, "model_not_found"),
        (chat(GHOST, "x"), 503, "no_ready_endpoint"),
        (b"{not json", 400, "invalid_json"),
    ],
    ids=["unknown-model", "no-ready-endpoint", "bad-json"],
)
def test_epps_errors_reach_the_client_as_through_envoy(
    client: httpx.Client, body: object, status: int, code: str
) -> None:
    if isinstance(body, bytes):
        response = client.post("/v1/chat/completions", content=body)
    else:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
