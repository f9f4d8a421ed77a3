"""The processes the fuzz suite aims at, and what it reads from them.

Simulated pods (one ``epp sim`` process), epp over them plus one endpoint where nothing
listens, and an Envoy per ext_proc body mode, all on 127.0.0.1 with free ports.
"""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import ManagedProcess, free_port, loopback_serve_args, start_envoy, start_epp_module

__all__ = [
    "EXCEPTION_METRIC",
    "GEMMA",
    "GHOST",
    "QWEN",
    "EppUnderTest",
    "FuzzStack",
    "GrpcClient",
    "Pool",
    "Vitals",
]

QWEN = "qwen2-1-5b"
GEMMA = "gemma-2-2b"
GHOST = "ghost-model"  # served only by an endpoint nobody listens on: never ready
EXCEPTION_METRIC = 'epp_extproc_stream_errors_total{reason="exception"}'
# How Python starts a traceback: at the start of a line (a client's "Traceback" inside a
# logged value is quoted, never at a line's start).
TRACEBACK = "Traceback (most recent call last)"

# Fast pods that finish any request in a few milliseconds whatever it asks for.
_SIM_ARGS = [
    "--decode-ms-per-token",
    "0.2",
    "--prefill-ms-per-token",
    "0.0001",
    "--base-latency-ms",
    "0",
    "--default-max-tokens",
    "3",
]


@dataclass(frozen=True, slots=True)
class Pool:
    """What epp was configured with: live pods and the dead endpoint, by address."""

    pods: dict[str, str]  # address -> model, each answering
    dead: dict[str, str]  # address -> model, nothing listening
    # Whether epp lets x-gateway-model-name-rewrite choose the model (a setting of epp's;
    # the session finds it out before fuzzing).
    honours_rewrite_header: bool = False

    @property
    def configured(self) -> frozenset[str]:
        return frozenset(self.pods) | frozenset(self.dead)

    @property
    def models(self) -> frozenset[str]:
        return frozenset(self.pods.values()) | frozenset(self.dead.values())

    def serving(self, model: str) -> frozenset[str]:
        """The live pods that serve ``model``."""
        return frozenset(address for address, m in self.pods.items() if m == model)


@dataclass
class LogWatch:
    """Reads a growing log file from where it last stopped."""

    path: Path
    offset: int = 0
    tracebacks: int = 0
    errors: list[str] = field(default_factory=list)  # ERROR/CRITICAL lines, bounded
    # The exception line ending each traceback (digits blanked), and one whole traceback
    # of each kind.
    exceptions: Counter[str] = field(default_factory=Counter)
    traceback_examples: dict[str, str] = field(default_factory=dict)

    def poll(self) -> list[str]:
        """New lines since the last call; counts tracebacks and error lines."""
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            data = log.read()
        # Only whole lines: a line being written is read next time.
        end = data.rfind(b"\n") + 1
        self.offset += end
        lines = data[:end].decode(errors="replace").splitlines()
        opened = -1  # where the traceback being read began
        for index, line in enumerate(lines):
            if line.startswith(TRACEBACK):
                self.tracebacks += 1
                opened = index
            elif opened >= 0 and not line.startswith(" "):
                kind = re.sub(r"\d+", "N", line)[:300]
                self.exceptions[kind] += 1
                self.traceback_examples.setdefault(kind, "\n".join(lines[opened : index + 1]))
                opened = -1
            if (" ERROR " in line or " CRITICAL " in line) and len(self.errors) < 50:
                self.errors.append(line[:2000])
        return lines


@dataclass
class EppUnderTest:
    process: ManagedProcess
    grpc_port: int
    metrics_port: int
    log: LogWatch

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def alive(self) -> bool:
        return self.process.process.poll() is None

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10.0) as response:
            text: str = response.read().decode()
            return text

    def counter(self, sample: str) -> float:
        """A sample's value by its exact text (name and labels); 0 when absent."""
        for line in self.metrics_text().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stream_errors(self) -> dict[str, float]:
        errors: dict[str, float] = {}
        pattern = re.compile(r'^epp_extproc_stream_errors_total\{reason="([^"]*)"\} (\S+)$')
        for line in self.metrics_text().splitlines():
            match = pattern.match(line)
            if match:
                errors[match.group(1)] = float(match.group(2))
        return errors

    def rss_kib(self) -> int:
        """Resident set size from /proc (0 when the process is gone)."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) if match else 0


@dataclass
class FuzzStack:
    log_dir: Path
    pool: Pool = field(init=False)
    epp: EppUnderTest = field(init=False)
    envoys: dict[str, tuple[ManagedProcess, int]] = field(default_factory=dict)
    _processes: list[ManagedProcess] = field(default_factory=list)

    def start(self) -> None:
        qwen_a, qwen_b, gemma = (f"127.0.0.1:{free_port()}" for _ in range(3))
        pods = {qwen_a: QWEN, qwen_b: QWEN, gemma: GEMMA}
        args = ["sim", *_SIM_ARGS]
        for address, model in pods.items():
            args += ["--pod", f"{address}={model}"]
        sim = start_epp_module("sim", args, log_dir=self.log_dir)
        self._processes.append(sim)
        for address in pods:
            sim.wait_http(f"http://{address}/health")
        self.pool = Pool(pods, {f"127.0.0.1:{free_port()}": GHOST})
        grpc_port, metrics_port = free_port(), free_port()
        args = [
            *loopback_serve_args(grpc_port, metrics_port),
            "--refresh-metrics-interval",
            "50ms",
            "--request-log",
            "all",
        ]
        for address, model in {**self.pool.pods, **self.pool.dead}.items():
            args += ["--endpoint", f"{address}={model}"]
        process = start_epp_module("epp", args, log_dir=self.log_dir)
        self._processes.append(process)
        process.wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
        self.epp = EppUnderTest(process, grpc_port, metrics_port, LogWatch(process.log_path))
        process.wait_until(self._all_pods_ready, timeout_s=30.0, what="every pod ready")

    def _all_pods_ready(self) -> bool:
        for line in self.epp.metrics_text().splitlines():
            if line.startswith("inference_pool_ready_pods"):
                return float(line.rsplit(" ", 1)[1]) >= len(self.pool.pods)
        return False

    def envoy_url(self, body_mode: str) -> str:
        """Envoy in front of epp with ``body_mode``, started on first use."""
        if body_mode not in self.envoys:
            ports = EnvoyPorts(
                listen_port=free_port(), admin_port=free_port(), epp_port=self.epp.grpc_port
            )
            envoy = start_envoy(
                envoy_bootstrap(ports, body_mode=body_mode),
                admin_port=ports.admin_port,
                log_dir=self.log_dir,
                name=f"envoy-{body_mode.lower()}",
            )
            self._processes.append(envoy)
            self.envoys[body_mode] = (envoy, ports.listen_port)
        return f"127.0.0.1:{self.envoys[body_mode][1]}"

    def stop(self) -> dict[str, int | None]:
        """Stop everything, newest first; the exit status of each process by name."""
        codes: dict[str, int | None] = {}
        for process in reversed(self._processes):
            codes[process.name] = process.stop()
        return codes


@dataclass
class Vitals:
    """epp's health between examples: alive, no new traceback, no new exception."""

    stack: FuzzStack
    exceptions_seen: float = 0.0

    def check(self) -> list[str]:
        epp = self.stack.epp
        problems = []
        if not epp.alive():
            return [
                f"epp exited with {epp.process.process.returncode}:\n{epp.process.log_tail(40)}"
            ]
        for name, (envoy, _) in self.stack.envoys.items():
            if envoy.process.poll() is not None:
                problems.append(f"envoy exited ({name}): {envoy.log_tail(20)}")
        before = epp.log.tracebacks
        lines = epp.log.poll()
        if epp.log.tracebacks > before:
            first = next(i for i, line in enumerate(lines) if line.startswith(TRACEBACK))
            excerpt = "\n".join(lines[max(0, first - 1) : first + 25])
            problems.append(
                f"Traceback in epp's log ({epp.log.tracebacks - before} new):\n{excerpt}"
            )
        exceptions = epp.counter(EXCEPTION_METRIC)
        if exceptions > self.exceptions_seen:
            problems.append(
                f"{EXCEPTION_METRIC} went from {self.exceptions_seen:g} to {exceptions:g}"
            )
            self.exceptions_seen = exceptions
        return problems


@dataclass
class GrpcClient:
    channel: grpc.Channel
    # A stream_stream multicallable with raw bytes in and out, so garbage can be sent too.
    call: Any
    pool: ThreadPoolExecutor  # runs streams concurrently, one thread each
