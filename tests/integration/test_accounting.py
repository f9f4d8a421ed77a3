"""epp's own view: what it routed, and the load it counts per endpoint returning to zero."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx

from tests.integration.conftest import Stack
from tests.integration.helpers import QWEN, chat
from tests.integration.metrics_helpers import metric, wait_for_metric


def epp_samples(stack: Stack, name: str) -> dict[str, float]:
    """Samples of one epp metric, keyed by their label text."""
    samples: dict[str, float] = {}
    for line in httpx.get(stack.epp_metrics_url, timeout=5.0).text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            samples[labels] = float(value)
    return samples


def wait_for_no_inflight(stack: Stack) -> dict[str, float]:
    deadline = time.monotonic() + 10
    while True:
        inflight = epp_samples(stack, "epp_endpoint_inflight_requests")
        if not any(inflight.values()) or time.monotonic() > deadline:
            return inflight


def test_routed_requests_are_counted(stack: Stack, client: httpx.Client) -> None:
    labels = {"model_name": QWEN, "target_model_name": QWEN, "priority": "0"}
    name = "inference_objective_request_total"
    before = metric(stack.epp_metrics_url, name, **labels)
    for _ in range(3):
        assert client.post("/v1/chat/completions", json=chat(QWEN, "count me")).status_code == 200
    assert metric(stack.epp_metrics_url, name, **labels) - before == 3


def test_inflight_load_is_held_while_streaming_and_released_after(
    stack: Stack, client: httpx.Client
) -> None:
    assert not any(wait_for_no_inflight(stack).values())
    request = chat(QWEN, "long answer", stream=True, max_tokens=200)
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        pod = response.headers["x-sim-pod"]
        lines = response.iter_lines()  # one iterator: dropping it would close the response
        next(lines)
        # Mid-stream: epp still counts the request on the pod it chose.
        assert epp_samples(stack, "epp_endpoint_inflight_requests")[f'{{endpoint="{pod}"}}'] == 1
        assert sum(1 for _ in lines) > 100
    assert not any(wait_for_no_inflight(stack).values())


def test_inflight_load_is_released_when_the_client_goes_away(
    stack: Stack, client: httpx.Client
) -> None:
    assert not any(wait_for_no_inflight(stack).values())
    url = urlsplit(stack.url)
    body = httpx.Request("POST", "/", json=chat(QWEN, "bye", stream=True, max_tokens=2000)).content
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # streaming has begun
        assert sum(epp_samples(stack, "epp_endpoint_inflight_requests").values()) == 1
    # The client hung up mid-stream: Envoy resets the stream and epp lets go of the load.
    assert not any(wait_for_no_inflight(stack).values())


def running(stack: Stack) -> float:
    return metric(stack.epp_metrics_url, "inference_objective_running_requests")


def wait_until_idle(stack: Stack) -> None:
    """epp counts nothing in flight: per endpoint, and per model (running requests)."""
    assert not any(wait_for_no_inflight(stack).values())
    deadline = time.monotonic() + 10
    while running(stack) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running(stack) == 0


def test_load_is_released_after_a_failed_response(stack: Stack, client: httpx.Client) -> None:
    wait_until_idle(stack)
    labels = {"model_name": QWEN, "target_model_name": QWEN, "error_code": "model_server_error"}
    errors = metric(stack.epp_metrics_url, "inference_objective_request_error_total", **labels)
    # epp routes it (it has a model); the pod refuses it (messages must be a list).
    response = client.post("/v1/chat/completions", json={"model": QWEN, "messages": "nope"})
    assert response.status_code == 400
    assert response.headers["x-sim-pod"] in stack.fleet.qwen_pods
    wait_until_idle(stack)
    assert (
        wait_for_metric(
            stack.epp_metrics_url, "inference_objective_request_error_total", errors + 1, **labels
        )
        == errors + 1
    )


def test_running_requests_follow_streams_that_finish_and_that_are_reset(
    stack: Stack, client: httpx.Client
) -> None:
    wait_until_idle(stack)
    request = chat(QWEN, "running", stream=True, max_tokens=50)
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        lines = response.iter_lines()
        next(lines)
        assert running(stack) == 1
        assert sum(1 for _ in lines) > 20
    wait_until_idle(stack)
    # Reset mid-stream: the client closes the response after the first event.
    with client.stream(
        "POST", "/v1/chat/completions", json=chat(QWEN, "reset", stream=True, max_tokens=2000)
    ) as response:
        lines = response.iter_lines()  # kept: dropping the iterator closes the response
        next(lines)
        assert running(stack) == 1
    wait_until_idle(stack)
