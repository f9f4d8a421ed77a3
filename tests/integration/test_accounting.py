"""epp's own view: what it routed, and the load it counts per endpoint returning to zero."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx

from tests.integration.conftest import Stack
from tests.integration.helpers import QWEN, chat


def epp_samples(stack: Stack, name: str) -> dict[str, float]:
    """Samples of one epp metric, keyed by their label text."""
    samples: dict[str, float] = {}
    for line in httpx.get(stack.epp_metrics_url, timeout=5.0).text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name):].rsplit(" ", 1)
            samples[labels] = float(value)
    return samples


def wait_for_no_inflight(stack: Stack) -> dict[str, float]:
    deadline = time.monotonic() + 10
    while True:
        inflight = epp_samples(stack, "epp_endpoint_inflight_requests")
        if not any(inflight.values()) or time.monotonic() > deadline:
            return inflight


def test_routed_requests_are_counted(stack: Stack, client: httpx.Client) -> None:
    label = f'{{model_name="{QWEN}",target_model_name="{QWEN}"}}'
    before = epp_samples(stack, "inference_objective_request_total").get(label, 0.0)
    for _ in range(3):
        assert client.post("/v1/chat/completions", json=chat(QWEN, "count me")).status_code == 200
    after = epp_samples(stack, "inference_objective_request_total")[label]
    assert after - before == 3


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
    body = httpx.Request("POST", "/", json=chat(QWEN, "bye", stream=True,
                                                max_tokens=2000)).content
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
                     b"content-type: application/json\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # streaming has begun
        assert sum(epp_samples(stack, "epp_endpoint_inflight_requests").values()) == 1
    # The client hung up mid-stream: Envoy resets the stream and epp lets go of the load.
    assert not any(wait_for_no_inflight(stack).values())
