"""Routing through a real Envoy: the pod epp picks is the pod that serves."""

from __future__ import annotations

import uuid

import httpx

from tests.integration.conftest import Stack
from tests.integration.helpers import GEMMA, GHOST, QWEN, chat, pod_metric, pod_requests, queue_on


def _served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-sim-pod"]


def _last_request_on(pod: str) -> dict[str, object]:
    return pod_requests(pod)[-1]


def test_model_header_reaches_the_pod(stack: Stack, client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json=chat(QWEN, "hi"))
    pod = _served_by(response)
    assert pod in stack.fleet.qwen_pods
    assert response.headers["x-sim-model-header"] == QWEN
    assert response.json()["model"] == QWEN


def test_request_lands_on_the_pod_epp_chose(stack: Stack, client: httpx.Client) -> None:
    for model, pods in ((QWEN, stack.fleet.qwen_pods), (GEMMA, (stack.fleet.gemma_pod,))):
        marker = uuid.uuid4().hex
        pod = _served_by(client.post("/v1/chat/completions", json=chat(model, marker)))
        assert pod in pods
        received = _last_request_on(pod)
        headers = received["headers"]
        assert isinstance(headers, dict)
        # Envoy routed on the header epp wrote; the pod that answered is the one it names.
        assert headers["x-gateway-destination-endpoint"] == pod


def test_completions_and_embeddings_are_routed_by_model(client: httpx.Client, stack: Stack) -> None:
    completion = client.post("/v1/completions", json={"model": GEMMA, "prompt": "Once"})
    assert _served_by(completion) == stack.fleet.gemma_pod
    embedding = client.post("/v1/embeddings", json={"model": QWEN, "input": "a sentence"})
    assert _served_by(embedding) in stack.fleet.qwen_pods


PREFIXES = 6  # with two pods, chance alone keeps all follow-ups on theirs once in 2**18
FOLLOW_UPS = 3


def test_same_long_prefix_goes_to_the_same_pod(stack: Stack, client: httpx.Client) -> None:
    for _ in range(PREFIXES):
        system = (
            f"You are assistant {uuid.uuid4().hex}. " + "Answer briefly and cite sources. " * 60
        )
        served = [
            _served_by(
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
            for turn in range(1 + FOLLOW_UPS)
        ]
        assert served == [served[0]] * len(served), system[:40]


def test_pod_with_a_long_queue_is_avoided(stack: Stack, client: httpx.Client) -> None:
    busy, idle = stack.fleet.qwen_pods
    with queue_on(busy, QWEN):
        served = [
            _served_by(client.post("/v1/chat/completions", json=chat(QWEN, f"q{i}")))
            for i in range(5)
        ]
    assert served == [idle] * 5


def test_get_models_lists_the_models_of_the_ready_pods(client: httpx.Client) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    assert "x-sim-pod" not in response.headers  # epp answered for the pool
    document = response.json()
    assert document["object"] == "list"
    # Not GHOST: nothing listens at the one endpoint that serves it.
    assert sorted(model["id"] for model in document["data"]) == sorted([GEMMA, QWEN])
    assert client.get(f"/v1/models/{GEMMA}").json()["id"] == GEMMA
    ghost = client.get(f"/v1/models/{GHOST}")
    assert ghost.status_code == 503, ghost.text
    assert ghost.json()["error"]["code"] == "no_ready_endpoint"


def test_spoofed_destination_header_is_ignored(stack: Stack, client: httpx.Client) -> None:
    # The client names the gemma pod (and a bogus address); epp's choice must win.
    for spoof in (stack.fleet.gemma_pod, "10.255.255.1:1"):
        response = client.post(
            "/v1/chat/completions",
            json=chat(QWEN, "hi"),
            headers={"x-gateway-destination-endpoint": spoof},
        )
        pod = _served_by(response)
        assert pod in stack.fleet.qwen_pods
        headers = _last_request_on(pod)["headers"]
        assert isinstance(headers, dict)
        assert headers["x-gateway-destination-endpoint"] == pod


def test_streaming_flows_token_by_token(stack: Stack, client: httpx.Client) -> None:
    request = chat(
        QWEN, "stream please", stream=True, max_tokens=150, stream_options={"include_usage": True}
    )
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200
        pod = response.headers["x-sim-pod"]
        events = response.iter_lines()
        first = next(line for line in events if line.startswith("data: "))
        # The first token is here while the pod is still generating the rest: nothing
        # between the pod and the client buffers the stream.
        assert pod_metric(pod, "vllm:num_requests_running") >= 1
        rest = [line for line in events if line.startswith("data: ")]
    assert first != "data: [DONE]"
    assert rest[-1] == "data: [DONE]"
    assert len(rest) >= 150  # one event per token, then usage and [DONE]
    assert '"usage"' in rest[-2]
