"""A small stack per test for the resilience tests: simulated pods in processes of their
own (so one can be stopped), epp with the test's flags, and a real Envoy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import ManagedProcess, free_port, loopback_serve_args, start_envoy, start_epp_module
from tests.integration.helpers import chat

# Fast pods: a request of a few tokens takes milliseconds.
FAST_SIM = [
    "--decode-ms-per-token",
    "2",
    "--prefill-ms-per-token",
    "0.001",
    "--base-latency-ms",
    "1",
]


def wait_until(check: Callable[[], object], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Rig:
    """Processes started for one test; everything is stopped when the test ends."""

    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)
    metrics_url: str = ""
    epp: ManagedProcess | None = None

    def sims(self, name: str, models: Sequence[str], *extra: str) -> list[str]:
        """One ``epp sim`` process with a pod per entry of ``models``; their addresses."""
        addresses = [f"127.0.0.1:{free_port()}" for _ in models]
        args = ["sim", *FAST_SIM, *extra]
        for address, model in zip(addresses, models, strict=True):
            args += ["--pod", f"{address}={model}"]
        process = self._start(name, args)
        for address in addresses:
            process.wait_http(f"http://{address}/health")
        return addresses

    def start_epp(self, endpoints: Mapping[str, str | None], *extra: str) -> int:
        """epp over ``endpoints`` (address -> model; None: serves any model); returns its
        ext_proc port."""
        grpc_port, metrics_port = free_port(), free_port()
        args = [
            *loopback_serve_args(grpc_port, metrics_port),
            "--refresh-metrics-interval",
            "50ms",
            "--log-level",
            "debug",
            *extra,
        ]
        for address, model in endpoints.items():
            args += ["--endpoint", address if model is None else f"{address}={model}"]
        self.epp = self._start("epp", args)
        self.epp.wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        # /readyz needs one ready endpoint; tests want them all.
        wait_until(
            lambda: self.metric("inference_pool_ready_pods") == len(endpoints),
            "every endpoint to be ready",
        )
        return grpc_port

    def start_envoy(
        self,
        grpc_port: int,
        *,
        response_body_mode: str = "NONE",
        body_mode: str = "FULL_DUPLEX_STREAMED",
    ) -> str:
        """Envoy in front of epp; returns its URL."""
        ports = EnvoyPorts(listen_port=free_port(), admin_port=free_port(), epp_port=grpc_port)
        bootstrap = envoy_bootstrap(
            ports, response_body_mode=response_body_mode, body_mode=body_mode
        )
        envoy = start_envoy(
            bootstrap,
            admin_port=ports.admin_port,
            log_dir=self.log_dir,
            name=f"envoy-{len(self.processes)}",
        )
        self.processes.append(envoy)
        return f"http://127.0.0.1:{ports.listen_port}"

    def _start(self, name: str, args: list[str]) -> ManagedProcess:
        process = start_epp_module(f"{name}-{len(self.processes)}", args, log_dir=self.log_dir)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            code = process.stop()
            if process is self.epp:
                assert code == 0, f"epp exited with {code}:\n{process.log_tail()}"

    def samples(self, name: str) -> dict[str, float]:
        """An epp metric's samples by label text ("" when it has no labels)."""
        samples: dict[str, float] = {}
        for line in httpx.get(self.metrics_url, timeout=5.0).text.splitlines():
            if line.startswith((name + "{", name + " ")):
                key, value = line[len(name) :].rsplit(" ", 1)
                samples[key.strip()] = float(value)
        return samples

    def epp_log_count(self, text: str) -> int:
        """How often ``text`` occurs in epp's log so far."""
        assert self.epp is not None
        return self.epp.log_path.read_text(errors="replace").count(text)

    def metric(self, name: str, labels: str = "") -> float:
        return next((value for key, value in self.samples(name).items() if labels in key), 0.0)


def set_faults(address: str, **faults: object) -> None:
    response = httpx.post(f"http://{address}/sim/faults", json=faults, timeout=5.0)
    response.raise_for_status()


@dataclass(frozen=True)
class Outcome:
    status: int  # 0: the connection failed
    pod: str  # x-sim-pod, "" when no pod answered
    fallback: str  # x-gateway-model-fallback, "" when absent
    model: str  # the response body's model, "" when there is none


class Traffic:
    """Clients sending ``model`` requests back to back until stopped; keeps every outcome."""

    def __init__(self, url: str, model: str, clients: int = 4) -> None:
        self.clients = clients
        self.outcomes: list[Outcome] = []
        self._url = url
        self._model = model
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self._url, timeout=30) as client:
            sent = 0
            while not self._stop.is_set():
                sent += 1
                body = chat(self._model, f"client {n} request {sent}", max_tokens=4)
                try:
                    response = client.post("/v1/chat/completions", json=body)
                except httpx.HTTPError:
                    self.outcomes.append(Outcome(0, "", "", ""))
                    continue
                model = response.json().get("model", "") if response.status_code == 200 else ""
                self.outcomes.append(
                    Outcome(
                        response.status_code,
                        response.headers.get("x-sim-pod", ""),
                        response.headers.get("x-gateway-model-fallback", ""),
                        model,
                    )
                )

    def served_by(self, pods: Sequence[str]) -> int:
        return sum(1 for o in list(self.outcomes) if o.status == 200 and o.pod in pods)
