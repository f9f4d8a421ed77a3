"""Envoy in front of epp when things go wrong: epp down, failing or hung; clients that
speak HTTP/1.0, never finish their headers, trickle their body or say nothing. A real
Envoy from ``envoy_bootstrap``, real epp and simulated pods, raw sockets where httpx
would hide what Envoy did."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from epp.envoy_config import (
    EPP_TIMEOUT_ERROR,
    EPP_UNAVAILABLE_ERROR,
    EnvoyPorts,
    EnvoyTimeouts,
    envoy_bootstrap,
)
from epp.stack import free_port, loopback_serve_args, start_envoy, start_epp_module
from tests.integration.helpers import chat, pod_metric, pod_requests
from tests.integration.resilience import Rig, wait_until

MODES = ["FULL_DUPLEX_STREAMED", "BUFFERED"]
# Pods slow enough that a 300-token answer outlasts the short timeouts used below.
SLOW_DECODE = ["--decode-ms-per-token", "10"]


def start_gateway(rig: Rig, epp_port: int, **bootstrap: Any) -> str:
    """Envoy in front of the ext_proc server on ``epp_port``; returns its URL."""
    ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=epp_port)
    envoy = start_envoy(
        envoy_bootstrap(ports, **bootstrap),
        admin_port=ports.admin_port,
        log_dir=rig.log_dir,
        name=f"envoy-{len(rig.processes)}",
    )
    rig.processes.append(envoy)
    return f"http://127.0.0.1:{ports.listen_port}"


def post(url: str, body: dict[str, object]) -> httpx.Response:
    # A fresh connection each time: some gateways here close idle ones within a second.
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def assert_json_error(response: httpx.Response, status: int, error: dict[str, str | None]) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": error}


# --- epp down, failing or hung: a JSON error, never Envoy's empty 500 -----------------


@pytest.mark.parametrize("body_mode", MODES)
def test_epp_not_listening_gets_a_json_503(rig: Rig, body_mode: str) -> None:
    url = start_gateway(rig, free_port(), body_mode=body_mode)  # nobody listens there
    assert_json_error(post(url, chat("m", "hi")), 503, EPP_UNAVAILABLE_ERROR)


def test_epp_killed_mid_request_gets_a_json_503(rig: Rig) -> None:
    (pod,) = rig.sims("sim", ["m"], *SLOW_DECODE)
    url = start_gateway(rig, rig.start_epp({pod: "m"}))
    outcome: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: outcome.append(post(url, chat("m", "long", max_tokens=300)))
    )
    client.start()
    # The pod is generating (no response headers yet) when epp dies.
    wait_until(lambda: pod_metric(pod, "vllm:num_requests_running") >= 1, "the request to run")
    assert rig.epp is not None
    rig.epp.process.kill()
    rig.epp.process.wait(30)
    rig.epp = None  # killed on purpose: its exit status says nothing
    client.join(60)
    assert_json_error(outcome[0], 503, EPP_UNAVAILABLE_ERROR)


class FailingProcessor(external_processor_pb2_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """An ext_proc server that ends every stream with a gRPC error status."""

    def Process(
        self, requests: Iterator[object], context: grpc.ServicerContext
    ) -> Iterator[object]:
        next(requests)  # the request headers
        context.abort(grpc.StatusCode.INTERNAL, "the picker failed")
        yield from ()


def test_a_grpc_error_status_from_the_picker_gets_a_json_503(rig: Rig) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(FailingProcessor(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        url = start_gateway(rig, port)
        assert_json_error(post(url, chat("m", "hi")), 503, EPP_UNAVAILABLE_ERROR)
    finally:
        server.stop(None)


@pytest.mark.parametrize("body_mode", MODES)
def test_a_hung_epp_gets_a_json_504_then_serves_again(rig: Rig, body_mode: str) -> None:
    (pod,) = rig.sims("sim", ["m"])
    # BUFFERED: epp's reply to the body is late (message timeout). Full duplex: Envoy
    # applies no message timeout there, and waits until the stream is idle.
    timeouts = EnvoyTimeouts(epp_message_s=1, stream_idle_s=1)
    url = start_gateway(rig, rig.start_epp({pod: "m"}), body_mode=body_mode, timeouts=timeouts)
    assert rig.epp is not None
    os.kill(rig.epp.process.pid, signal.SIGSTOP)
    try:
        assert_json_error(post(url, chat("m", "hi")), 504, EPP_TIMEOUT_ERROR)
    finally:
        os.kill(rig.epp.process.pid, signal.SIGCONT)
    assert post(url, chat("m", "hi", max_tokens=2)).status_code == 200


def test_epps_own_503_and_envoys_503_for_a_dead_pod_are_left_alone(rig: Rig) -> None:
    (pod,) = rig.sims("sim", ["m"])
    never_up = f"127.0.0.1:{free_port()}"
    # No scrape makes the pod unready, so epp keeps routing to it once it is gone; the
    # endpoint of "ghost" never answers, so it is never ready (rig.start_epp would wait).
    grpc_port, metrics_port = free_port(), free_port()
    rig.epp = start_epp_module(
        "epp",
        [
            *loopback_serve_args(grpc_port, metrics_port),
            "--unready-after-failures",
            "1000000",
            "--metrics-staleness-threshold",
            "1h",
            "--endpoint",
            f"{pod}=m",
            "--endpoint",
            f"{never_up}=ghost",
        ],
        log_dir=rig.log_dir,
    )
    rig.processes.append(rig.epp)
    rig.epp.wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
    url = start_gateway(rig, grpc_port)

    unready = post(url, chat("ghost", "hi"))  # epp's own ImmediateResponse
    assert unready.status_code == 503
    assert unready.json()["error"]["code"] == "no_ready_endpoint"

    assert post(url, chat("m", "hi", max_tokens=2)).status_code == 200
    rig.processes[0].stop()
    refused = post(url, chat("m", "anyone?"))  # Envoy's own, read by epp's passive health
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "text/plain"
    assert "upstream connect error" in refused.text


# --- clients: HTTP/1.0, slow loris, trickled bodies, silence --------------------------


@dataclass(frozen=True)
class Gateway:
    url: str
    port: int
    pod: str


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One stack whose Envoy has timeouts of a second (defaults are tens of seconds)."""
    rig = Rig(tmp_path_factory.mktemp("hardening"))
    try:
        (pod,) = rig.sims("sim", ["m"], *SLOW_DECODE)
        timeouts = EnvoyTimeouts(request_headers_s=1, request_s=1, idle_s=1)
        url = start_gateway(rig, rig.start_epp({pod: "m"}), timeouts=timeouts)
        yield Gateway(url, int(url.rsplit(":", 1)[1]), pod)
    finally:
        rig.stop()


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until Envoy closes it.

    Fails (socket timeout) if Envoy keeps the connection open for 30 s.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def http_10_post(body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.0\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(payload)
    ) + payload


def test_http_1_0_clients_get_their_answer(gateway: Gateway) -> None:
    head, _, body = exchange(gateway.port, http_10_post(chat("m", "hi", max_tokens=3))).partition(
        b"\r\n\r\n"
    )
    assert head.startswith(b"HTTP/1.0 200"), head
    assert json.loads(body)["usage"]["completion_tokens"] == 3

    head, _, body = exchange(
        gateway.port, http_10_post(chat("m", "hi", max_tokens=3, stream=True))
    ).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    assert body.rstrip().endswith(b"data: [DONE]")  # the whole stream, then the close


def test_unfinished_headers_and_silent_connections_are_closed(gateway: Gateway) -> None:
    before = len(pod_requests(gateway.pod))
    with ThreadPoolExecutor(max_workers=20) as pool:
        # Slow loris: a header block that never ends (20 at once).
        half = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-le"
        replies = list(pool.map(lambda _: exchange(gateway.port, half), range(20)))
    # Each got Envoy's 408 and was closed (exchange read to the end); none reached a pod.
    assert all(reply.startswith(b"HTTP/1.1 408") for reply in replies), replies
    assert len(pod_requests(gateway.pod)) == before
    # A connection that never sends a byte is closed once idle.
    assert exchange(gateway.port, b"") == b""


def test_a_trickled_body_is_cut_but_long_answers_are_not(gateway: Gateway) -> None:
    before = len(pod_requests(gateway.pod))
    # Promises 100 bytes, sends 10, then nothing: Envoy closes the connection.
    trickle = (
        b'POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"model":'
    )
    # Envoy's 408 goes through epp (the request was never routed) and reaches the client.
    assert exchange(gateway.port, trickle).startswith(b"HTTP/1.1 408")
    assert len(pod_requests(gateway.pod)) == before

    # request_timeout ends with the request: 300 tokens take longer than it, and arrive.
    answer = post(gateway.url, chat("m", "long", max_tokens=300))
    assert answer.status_code == 200
    assert answer.json()["usage"]["completion_tokens"] == 300
    body = chat("m", "long", max_tokens=300, stream=True, stream_options={"include_usage": True})
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=60
    ) as streamed:
        events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert streamed.status_code == 200
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["usage"]["completion_tokens"] == 300
