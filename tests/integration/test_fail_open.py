"""What clients see when epp stops under load. ``epp envoy-config --fail-open``: Envoy
routes round-robin over the pool and no request fails; a destination a client names is
never followed. Fail-closed (the default): every failure is a clean JSON 503."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from epp.envoy_config import EPP_UNAVAILABLE_ERROR, EnvoyPorts, envoy_bootstrap
from epp.stack import ManagedProcess, free_port, loopback_serve_args, start_envoy, start_epp_module
from tests.integration.conftest import Fleet
from tests.integration.helpers import QWEN, chat, pod_requests

pytestmark = pytest.mark.integration


@dataclass
class FailOpenStack:
    url: str
    epp: ManagedProcess
    metrics_url: str


def _stack(fleet: Fleet, tmp_path: Path, *, fail_open: bool) -> Iterator[FailOpenStack]:
    grpc_port, metrics_port = free_port(), free_port()
    args = loopback_serve_args(grpc_port, metrics_port)
    for address in fleet.qwen_pods:
        args += ["--endpoint", f"{address}={QWEN}"]
    name = "fail-open" if fail_open else "fail-closed"
    epp = start_epp_module(f"epp-{name}", args, log_dir=tmp_path)
    envoy: ManagedProcess | None = None
    try:
        epp.wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
        ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=grpc_port)
        # Fail-open needs BUFFERED; fail-closed runs as gateways do, in full duplex.
        bootstrap = (
            envoy_bootstrap(ports, body_mode="BUFFERED", fail_open=fleet.qwen_pods)
            if fail_open
            else envoy_bootstrap(ports)
        )
        envoy = start_envoy(
            bootstrap, admin_port=ports.admin_port, log_dir=tmp_path, name=f"envoy-{name}"
        )
        yield FailOpenStack(
            f"http://127.0.0.1:{ports.listen_port}", epp, f"http://127.0.0.1:{metrics_port}"
        )
    finally:
        if envoy is not None:
            envoy.stop()
        epp.stop()


@pytest.fixture
def fail_open(fleet: Fleet, tmp_path: Path) -> Iterator[FailOpenStack]:
    yield from _stack(fleet, tmp_path, fail_open=True)


@pytest.fixture
def fail_closed(fleet: Fleet, tmp_path: Path) -> Iterator[FailOpenStack]:
    yield from _stack(fleet, tmp_path, fail_open=False)


@dataclass
class Load:
    """Requests sent back to back from a thread until told to stop."""

    url: str
    statuses: list[int] = field(default_factory=list)  # 0: no HTTP answer at all
    pods: list[str] = field(default_factory=list)
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # status, type, body
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                try:
                    response = http.post(
                        "/v1/chat/completions", json=chat(QWEN, "hi", max_tokens=2)
                    )
                except httpx.HTTPError as exc:
                    self.statuses.append(0)
                    self.failures.append((0, "", repr(exc)))
                    continue
                self.statuses.append(response.status_code)
                self.pods.append(response.headers.get("x-sim-pod", ""))
                if response.status_code != 200:
                    self.failures.append(
                        (
                            response.status_code,
                            response.headers.get("content-type", ""),
                            response.text,
                        )
                    )

    def stop_epp_midway(self, epp: ManagedProcess) -> int:
        """Send load, stop epp after 20 answers, go on for 40 more; the number of answers
        before epp had exited."""
        sender = threading.Thread(target=self.run)
        sender.start()
        try:
            while len(self.statuses) < 20:  # routed by epp
                threading.Event().wait(0.01)
            epp.stop()  # SIGTERM: epp drains and exits
            sent_before = len(self.statuses)
            while len(self.statuses) < sent_before + 40:  # epp is gone
                threading.Event().wait(0.01)
        finally:
            self.stop.set()
            sender.join(timeout=30)
        return sent_before


def test_with_epp_stopped_under_load_no_request_fails(
    fail_open: FailOpenStack, fleet: Fleet
) -> None:
    load = Load(fail_open.url)
    sent_before = load.stop_epp_midway(fail_open.epp)
    assert set(load.statuses) == {200}, load.failures[:3]
    # After epp left, Envoy spread the requests over the pool itself.
    assert set(load.pods[sent_before:]) == set(fleet.qwen_pods)


def test_fail_closed_with_epp_stopped_under_load_every_failure_is_a_clean_503(
    fail_closed: FailOpenStack,
) -> None:
    load = Load(fail_closed.url)
    sent_before = load.stop_epp_midway(fail_closed.epp)
    assert set(load.statuses[:20]) == {200}
    # The request in flight when epp exited may still have been served; none after it.
    assert set(load.statuses[sent_before + 1 :]) == {503}
    assert {(status, kind) for status, kind, _ in load.failures} == {(503, "application/json")}
    assert {json.dumps(json.loads(body), sort_keys=True) for _, _, body in load.failures} == {
        json.dumps({"error": EPP_UNAVAILABLE_ERROR}, sort_keys=True)
    }


def test_with_epp_up_its_pick_is_followed(fail_open: FailOpenStack) -> None:
    # Round-robin would alternate between the two pods; epp keeps a shared prefix on one.
    system = "You are a careful assistant. " * 80
    with httpx.Client(base_url=fail_open.url, timeout=30) as http:
        pods = {
            http.post(
                "/v1/chat/completions",
                json={
                    "model": QWEN,
                    "max_tokens": 2,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": f"question {turn}"},
                    ],
                },
            ).headers["x-sim-pod"]
            for turn in range(8)
        }
    assert len(pods) == 1, pods


def test_with_epp_down_a_client_cannot_name_the_destination(
    fail_open: FailOpenStack, fleet: Fleet
) -> None:
    # Routes are chosen before the client's copy of the header is dropped: such a request
    # matches the route that follows epp's pick, finds no pick and gets 503. It is never
    # sent where the client said.
    fail_open.epp.stop()
    before = len(pod_requests(fleet.gemma_pod))
    with httpx.Client(base_url=fail_open.url, timeout=30) as http:
        for _ in range(6):
            response = http.post(
                "/v1/chat/completions",
                json=chat(QWEN, "hi", max_tokens=2),
                headers={"x-gateway-destination-endpoint": fleet.gemma_pod},
            )
            assert response.status_code == 503
        plain = http.post("/v1/chat/completions", json=chat(QWEN, "hi", max_tokens=2))
        assert plain.status_code == 200 and plain.headers["x-sim-pod"] in fleet.qwen_pods
    assert len(pod_requests(fleet.gemma_pod)) == before
