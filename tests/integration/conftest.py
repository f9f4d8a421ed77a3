"""A real stack per test session: simulated vLLM pods, epp (its own process), and one
Envoy per ext_proc body mode, all on 127.0.0.1 with free ports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import ManagedProcess, free_port, loopback_serve_args, start_envoy, start_epp_module
from tests.integration.helpers import GEMMA, GHOST, QWEN
from tests.integration.resilience import Rig


@dataclass(frozen=True)
class Fleet:
    qwen_pods: tuple[str, str]
    gemma_pod: str
    dead_pod: str  # in epp's endpoint list, nothing listens there

    @property
    def all_pods(self) -> tuple[str, ...]:
        return (*self.qwen_pods, self.gemma_pod)


@dataclass(frozen=True)
class Stack:
    body_mode: str
    url: str  # Envoy's listener
    fleet: Fleet
    epp_metrics_url: str


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack-logs")


@pytest.fixture(scope="session")
def fleet(log_dir: Path) -> Iterator[Fleet]:
    qwen_a, qwen_b, gemma = (f"127.0.0.1:{free_port()}" for _ in range(3))
    args = [
        "sim",
        "--pod",
        f"{qwen_a}={QWEN}",
        "--pod",
        f"{qwen_b}={QWEN}",
        "--pod",
        f"{gemma}={GEMMA}",
        # One running sequence per pod, so a handful of requests builds a queue.
        "--max-num-seqs",
        "1",
        "--decode-ms-per-token",
        "2",
        # Near-free prefill, so the 10 MB body test does not simulate seconds of GPU.
        "--prefill-ms-per-token",
        "0.00001",
        "--base-latency-ms",
        "1",
    ]
    sim = start_epp_module("sim", args, log_dir=log_dir)
    try:
        for address in (qwen_a, qwen_b, gemma):
            sim.wait_http(f"http://{address}/health")
        yield Fleet((qwen_a, qwen_b), gemma, f"127.0.0.1:{free_port()}")
    finally:
        sim.stop()


@pytest.fixture(scope="session")
def epp_process(fleet: Fleet, log_dir: Path) -> Iterator[tuple[ManagedProcess, int, int]]:
    grpc_port, metrics_port = free_port(), free_port()
    args = [
        *loopback_serve_args(grpc_port, metrics_port),
        "--request-log",
        "all",
        "--log-level",
        "debug",
    ]
    for address in fleet.qwen_pods:
        args += ["--endpoint", f"{address}={QWEN}"]
    args += ["--endpoint", f"{fleet.gemma_pod}={GEMMA}", "--endpoint", f"{fleet.dead_pod}={GHOST}"]
    epp = start_epp_module("epp", args, log_dir=log_dir)
    try:
        epp.wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
        yield epp, grpc_port, metrics_port
    finally:
        code = epp.stop()
        # SIGTERM must end epp cleanly (graceful shutdown), not by a crash.
        assert code == 0, f"epp exited with {code}:\n{epp.log_tail()}"


@pytest.fixture(scope="session", params=["FULL_DUPLEX_STREAMED", "BUFFERED"])
def stack(
    request: pytest.FixtureRequest,
    fleet: Fleet,
    epp_process: tuple[ManagedProcess, int, int],
    log_dir: Path,
) -> Iterator[Stack]:
    _, grpc_port, metrics_port = epp_process
    ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=grpc_port)
    envoy = start_envoy(
        envoy_bootstrap(ports, body_mode=request.param),
        admin_port=ports.admin_port,
        log_dir=log_dir,
        name=f"envoy-{request.param.lower()}",
    )
    try:
        yield Stack(
            request.param,
            f"http://127.0.0.1:{ports.listen_port}",
            fleet,
            f"http://127.0.0.1:{metrics_port}/metrics",
        )
    finally:
        envoy.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30.0) as http:
        yield http


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A stack of the test's own (pods, epp with its flags, Envoy), stopped at its end."""
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.stop()
