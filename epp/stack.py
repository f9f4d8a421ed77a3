"""Starting and stopping the processes of a local stack: simulated pods, epp, Envoy,
and the redis-server epp replicas share their decisions through.

Used by ``epp demo`` (what ``make run`` starts), the integration tests and the
benchmarks, so all three run the same processes the same way.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from epp.envoy_config import envoy_binary, render_bootstrap

__all__ = [
    "ManagedProcess",
    "StackError",
    "free_port",
    "free_port_run",
    "loopback_serve_args",
    "start_envoy",
    "start_epp_module",
    "start_redis",
]


class StackError(RuntimeError):
    """A process of the stack did not start, or did not become ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody has bound now, for a child process to listen on."""
    return free_port_run(1, host)


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive ports nobody has bound now.

    The ports come from below the kernel's ephemeral range. A port from ``bind(("", 0))``
    is an ephemeral one, and between picking it and the child binding it, any outgoing
    connection on the machine can take it as its source port (CI saw a simulated pod fail
    with "Address already in use" that way). A cursor walks the range from a random start,
    so this process hands a port out again only after going round all of them (12,768
    ports by default), and runs of any length stay free behind it.
    """
    global _next_port
    low, high = _UNEPHEMERAL_PORTS
    span = high - low
    if count > span:
        raise StackError(f"no run of {count} ports below the ephemeral range")
    port = _next_port
    walked = 0
    while walked <= span:
        if port + count > high:  # wrap: a run never straddles the end
            walked += high - port
            port = low
            continue
        taken = next((p for p in range(port, port + count) if not _bindable(host, p)), None)
        if taken is None:
            _next_port = port + count
            return port
        walked += taken + 1 - port
        port = taken + 1
    raise StackError(f"no run of {count} free ports in {low}-{high}")


def _bindable(host: str, port: int) -> bool:
    # Bind without SO_REUSEADDR: a port in TIME_WAIT or held by a client socket fails too.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _unephemeral_ports() -> tuple[int, int]:
    """[low, high): from 20000 to where the ephemeral range starts (32768 by default)."""
    try:
        ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        first_ephemeral = int(ephemeral[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    # A machine whose ephemeral range starts lower has no such ports; take some anyway.
    return 20000, max(first_ephemeral, 30000)


_UNEPHEMERAL_PORTS = _unephemeral_ports()
_next_port = random.randrange(*_UNEPHEMERAL_PORTS)


class ManagedProcess:
    """A child process with its output in a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise StackError(f"{self.name} exited with status {code}:\n{self.log_tail()}")

    def wait_until(self, ready: Callable[[], bool], *, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if ready():
                return
            time.sleep(0.05)
        raise StackError(
            f"{self.name}: {what} not ready after {timeout_s:.0f}s:\n{self.log_tail()}"
        )

    def wait_http(self, url: str, *, timeout_s: float = 30.0, status: int = 200) -> None:
        self.wait_until(lambda: _http_status(url) == status, timeout_s=timeout_s, what=url)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        self._log.close()
        return self.process.returncode


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def loopback_serve_args(grpc_port: int, metrics_port: int) -> list[str]:
    """``epp serve`` arguments for a local stack: ext_proc (and gRPC health) on
    127.0.0.1:``grpc_port``, metrics on 127.0.0.1:``metrics_port``, no separate health
    port. Append the rest (endpoints, flags)."""
    return [
        "serve",
        "--grpc-host",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--grpc-health-port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(metrics_port),
    ]


def start_epp_module(
    name: str,
    args: Sequence[str],
    *,
    log_dir: Path,
    env: dict[str, str] | None = None,
    checkout: Path | None = None,
) -> ManagedProcess:
    """Run ``python -m epp ARGS`` with this interpreter (no reliance on PATH).

    With ``checkout``, the epp package of that source tree runs instead of this one
    (``-m`` puts the working directory first on the import path).
    """
    return ManagedProcess(
        name, [sys.executable, "-m", "epp", *args], log_dir=log_dir, env=env, cwd=checkout
    )


def start_envoy(
    bootstrap: dict[str, Any],
    *,
    admin_port: int,
    log_dir: Path,
    name: str = "envoy",
    timeout_s: float = 30.0,
    concurrency: int = 1,
) -> ManagedProcess:
    """Start Envoy with ``bootstrap`` and wait until its admin says it is ready.

    Envoy 1.40 dies with the thread that started it, so call this from a thread that
    lives as long as Envoy should (the main thread, or a session-long test fixture).
    """
    config_path = log_dir / f"{name}-bootstrap.yaml"
    config_path.write_text(render_bootstrap(bootstrap))
    process = ManagedProcess(
        name,
        [
            envoy_binary(),
            "-c",
            str(config_path),
            "--log-level",
            "warn",
            "--base-id",
            str(admin_port),
            "--concurrency",
            str(concurrency),
        ],
        log_dir=log_dir,
    )
    process.wait_http(f"http://127.0.0.1:{admin_port}/ready", timeout_s=timeout_s)
    return process


def start_redis(port: int, *, log_dir: Path, name: str = "redis") -> ManagedProcess:
    """redis-server on 127.0.0.1:``port`` without persistence, once it answers PING:
    what epp replicas share their routing decisions through (``--sync-redis-url``)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server is not installed (apt-get install -y redis-server)")
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(log_dir)]
    process = ManagedProcess(name, argv, log_dir=log_dir)
    process.wait_until(lambda: _redis_answers(port), timeout_s=10, what="redis PING")
    return process


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
