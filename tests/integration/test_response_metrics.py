"""Responses through Envoy and epp to simulated pods: what the client gets is what the pod
sent, and epp's per-request metrics and log lines match the usage the pod reported, both
when an observing filter copies response bodies to epp (OBSERVED, with each request body
mode) and when Envoy measures them itself and its access log tells epp (LOGGED)."""

from __future__ import annotations

import hashlib
import json
import shlex
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import ManagedProcess, free_port, loopback_serve_args, start_envoy, start_epp_module
from tests.integration.conftest import Fleet, Stack
from tests.integration.helpers import QWEN, chat, finished_lines
from tests.integration.metrics_helpers import metric, wait_for_metric

LABELS = {"model_name": QWEN, "target_model_name": QWEN}
SERIES = {
    "input": "inference_objective_input_tokens_sum",
    "output": "inference_objective_output_tokens_sum",
    "cached": "inference_objective_prompt_cached_tokens_sum",
    "requests": "inference_objective_request_duration_seconds_count",
    "ttft": "inference_objective_request_ttft_seconds_count",
    "tpot": "inference_objective_request_tpot_seconds_count",
    "ntpot": "inference_objective_normalized_time_per_output_token_seconds_count",
    "outputs": "inference_objective_output_tokens_count",
}


@pytest.fixture(
    scope="module",
    params=[
        ("FULL_DUPLEX_STREAMED", "OBSERVED"),
        ("BUFFERED", "OBSERVED"),
        ("FULL_DUPLEX_STREAMED", "LOGGED"),
    ],
    ids=lambda modes: "-".join(mode.lower() for mode in modes),
)
def stack(
    request: pytest.FixtureRequest,
    fleet: Fleet,
    epp_process: tuple[ManagedProcess, int, int],
    log_dir: Path,
) -> Iterator[Stack]:
    body_mode, response_body_mode = request.param
    _, grpc_port, metrics_port = epp_process
    ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=grpc_port)
    envoy = start_envoy(
        envoy_bootstrap(ports, body_mode=body_mode, response_body_mode=response_body_mode),
        admin_port=ports.admin_port,
        log_dir=log_dir,
        name=f"envoy-{body_mode.lower()}-{response_body_mode.lower()}",
    )
    try:
        yield Stack(
            body_mode,
            f"http://127.0.0.1:{ports.listen_port}",
            fleet,
            f"http://127.0.0.1:{metrics_port}/metrics",
        )
    finally:
        envoy.stop()


def snapshot(metrics_url: str) -> dict[str, float]:
    return {key: metric(metrics_url, name, **LABELS) for key, name in SERIES.items()}


def delta_after_one_request(metrics_url: str, before: dict[str, float]) -> dict[str, float]:
    """The change of every series once epp has recorded one more request."""
    wait_for_metric(metrics_url, SERIES["requests"], before["requests"] + 1, **LABELS)
    after = snapshot(metrics_url)
    return {key: after[key] - before[key] for key in SERIES}


def sse_data(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def log_line(log_path: Path, request_id: str, *, json_format: bool) -> dict[str, str]:
    """The fields of epp's one log line for ``request_id`` (waiting for it to be written)."""
    lines = finished_lines(log_path, request_id)
    assert len(lines) == 1, lines
    if json_format:
        return {k: str(v) for k, v in json.loads(lines[0]).items()}
    _, _, fields = lines[0].partition("request finished ")
    return dict(field.split("=", 1) for field in shlex.split(fields))  # values may be quoted


def test_json_response_usage_is_counted(stack: Stack, client: httpx.Client) -> None:
    before = snapshot(stack.epp_metrics_url)
    body = chat(QWEN, f"count my tokens {uuid.uuid4().hex}", max_tokens=7)
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    usage = response.json()["usage"]
    delta = delta_after_one_request(stack.epp_metrics_url, before)
    assert delta["input"] == usage["prompt_tokens"] > 0
    assert delta["output"] == usage["completion_tokens"] == 7
    assert delta["cached"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert (delta["ntpot"], delta["ttft"], delta["tpot"]) == (1, 0, 0)  # not streamed


def test_streamed_usage_is_counted_when_the_client_asks(stack: Stack, client: httpx.Client) -> None:
    before = snapshot(stack.epp_metrics_url)
    body = chat(
        QWEN,
        f"stream {uuid.uuid4().hex}",
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        events = sse_data(response.read().decode())
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]  # the client asked: it gets the usage event
    delta = delta_after_one_request(stack.epp_metrics_url, before)
    assert (delta["input"], delta["output"]) == (usage["prompt_tokens"], 6)
    assert (delta["ttft"], delta["tpot"], delta["ntpot"]) == (1, 1, 1)


def test_stream_without_usage_is_timed_and_passes_unchanged(
    stack: Stack, client: httpx.Client
) -> None:
    before = snapshot(stack.epp_metrics_url)
    body = chat(QWEN, "no usage please", max_tokens=5, stream=True)
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        events = sse_data(response.read().decode())
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert contents == ["", "tok0", " tok1", " tok2", " tok3", " tok4"]
    delta = delta_after_one_request(stack.epp_metrics_url, before)
    assert delta["ttft"] == 1 and delta["outputs"] == 0  # no usage: no token counts


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_responses_api_usage_is_counted(stack: Stack, client: httpx.Client, stream: bool) -> None:
    before = snapshot(stack.epp_metrics_url)
    body = {
        "model": QWEN,
        "input": f"responses {uuid.uuid4().hex}",
        "max_output_tokens": 4,
        "stream": stream,
    }
    response = client.post("/v1/responses", json=body)
    assert response.status_code == 200
    if stream:
        final = json.loads(sse_data(response.text)[-1])
        assert final["type"] == "response.completed"
        usage = final["response"]["usage"]
    else:
        usage = response.json()["usage"]
    delta = delta_after_one_request(stack.epp_metrics_url, before)
    assert (delta["input"], delta["output"]) == (usage["input_tokens"], 4)
    assert delta["ttft"] == (1 if stream else 0)


def test_each_request_gets_one_log_line(
    stack: Stack, client: httpx.Client, epp_process: tuple[ManagedProcess, int, int]
) -> None:
    request_id = uuid.uuid4().hex
    response = client.post(
        "/v1/chat/completions",
        json=chat(QWEN, "log me", max_tokens=3),
        headers={"x-request-id": request_id},
    )
    usage = response.json()["usage"]
    fields = log_line(epp_process[0].log_path, request_id, json_format=False)
    assert fields["outcome"] == "completed" and fields["status"] == "200"
    assert fields["model"] == QWEN and fields["endpoint"] == response.headers["x-sim-pod"]
    assert fields["path"] == "/v1/chat/completions" and float(fields["decision_ms"]) > 0
    assert int(fields["prompt_tokens"]) == usage["prompt_tokens"]
    assert int(fields["completion_tokens"]) == 3

    missing = client.post(
        "/v1/chat/completions",
        json=chat("no-such-model", "x"),
        headers={"x-request-id": request_id + "-404"},
    )
    assert missing.status_code == 404
    fields = log_line(epp_process[0].log_path, request_id + "-404", json_format=False)
    assert (fields["outcome"], fields["error_code"]) == ("error", "model_not_found")


# -- --inject-stream-usage, on an epp of its own --------------------------------------------


@dataclass(frozen=True)
class InjectingStack:
    url: str
    metrics_url: str
    epp: ManagedProcess


def _own_epp(
    name: str, fleet: Fleet, log_dir: Path, *extra: str
) -> tuple[ManagedProcess, int, int]:
    grpc_port, metrics_port = free_port(), free_port()
    args = [
        *loopback_serve_args(grpc_port, metrics_port),
        "--log-format",
        "json",
        "--request-log",
        "all",
        *extra,
    ]
    for address in fleet.qwen_pods:
        args += ["--endpoint", f"{address}={QWEN}"]
    epp = start_epp_module(name, args, log_dir=log_dir)
    epp.wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
    return epp, grpc_port, metrics_port


def test_a_fresh_epp_takes_envoys_readings_from_its_first_request(
    fleet: Fleet, log_dir: Path
) -> None:
    # No observing stream or access log has reached this epp yet: the routing filter's
    # stream metadata must tell it to wait for the access log entry.
    epp, grpc_port, metrics_port = _own_epp("epp-logged", fleet, log_dir)
    ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=grpc_port)
    envoy = start_envoy(
        envoy_bootstrap(ports, response_body_mode="LOGGED"),
        admin_port=ports.admin_port,
        log_dir=log_dir,
        name="envoy-logged-fresh",
    )
    try:
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        request_id = uuid.uuid4().hex
        body = chat(
            QWEN,
            f"first {request_id}",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{ports.listen_port}", timeout=30) as http:
            with http.stream(
                "POST", "/v1/chat/completions", json=body, headers={"x-request-id": request_id}
            ) as response:
                events = sse_data(response.read().decode())
        usage = json.loads(events[-2])["usage"]
        fields = log_line(epp.log_path, request_id, json_format=True)
        assert fields["outcome"] == "completed"
        assert int(fields["prompt_tokens"]) == usage["prompt_tokens"]
        assert int(fields["completion_tokens"]) == 5
        assert float(fields["ttft_ms"]) >= 0
        assert metric(metrics_url, SERIES["ttft"], **LABELS) == 1
        assert metric(metrics_url, SERIES["output"], **LABELS) == 5
    finally:
        envoy.stop()
        assert epp.stop() == 0, epp.log_tail()


@pytest.fixture(scope="module")
def injecting(fleet: Fleet, log_dir: Path) -> Iterator[InjectingStack]:
    epp, grpc_port, metrics_port = _own_epp("epp-inject", fleet, log_dir, "--inject-stream-usage")
    envoy: ManagedProcess | None = None
    try:
        ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=grpc_port)
        # Stripping the added usage event needs the body on the routing stream.
        envoy = start_envoy(
            envoy_bootstrap(ports, response_body_mode="FULL_DUPLEX_STREAMED"),
            admin_port=ports.admin_port,
            log_dir=log_dir,
            name="envoy-inject",
        )
        yield InjectingStack(
            f"http://127.0.0.1:{ports.listen_port}", f"http://127.0.0.1:{metrics_port}/metrics", epp
        )
    finally:
        if envoy is not None:
            envoy.stop()
        assert epp.stop() == 0, epp.log_tail()


def test_injected_usage_is_counted_and_kept_from_the_client(injecting: InjectingStack) -> None:
    request_id = uuid.uuid4().hex
    body = chat(QWEN, f"inject {request_id}", max_tokens=9, stream=True)
    before = snapshot(injecting.metrics_url)
    with (
        httpx.Client(base_url=injecting.url, timeout=30) as client,
        client.stream(
            "POST", "/v1/chat/completions", json=body, headers={"x-request-id": request_id}
        ) as response,
    ):
        text = response.read().decode()
        sha = response.headers["x-sim-body-sha256"]
    # The pod got the request with include_usage added, keys otherwise as sent ...
    upstream = orjson.dumps({**body, "stream_options": {"include_usage": True}})
    assert sha == hashlib.sha256(upstream).hexdigest()
    # ... and the client got the stream it asked for: tokens and [DONE], no usage event.
    events = sse_data(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] and "usage" not in c for c in chunks)
    assert len(chunks) == 1 + 9  # the role event, then one per token
    delta = delta_after_one_request(injecting.metrics_url, before)
    assert delta["output"] == 9 and delta["input"] > 0 and delta["tpot"] == 1
    fields = log_line(injecting.epp.log_path, request_id, json_format=True)
    assert fields["completion_tokens"] == "9" and fields["outcome"] == "completed"
    assert fields["logger"] == "epp.requests" and fields["stream"] == "True"


def test_a_client_that_asks_for_usage_still_gets_it(injecting: InjectingStack) -> None:
    body = chat(QWEN, "mine", max_tokens=2, stream=True, stream_options={"include_usage": True})
    with httpx.Client(base_url=injecting.url, timeout=30) as client:
        events = sse_data(client.post("/v1/chat/completions", json=body).text)
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 2
