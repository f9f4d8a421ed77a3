"""The routers compared on the same simulated fleet, behind one small interface.

Every contender implements :class:`Contender`: ``start`` brings the router up in front of
the given pods and returns its base URL once it answers, ``stop`` tears it down. Built in:

| name | what routes |
| --- | --- |
| ``envoy-rr`` | Envoy alone, a static cluster of all pods, ``ROUND_ROBIN`` |
| ``envoy-lr`` | the same, ``LEAST_REQUEST`` (Envoy's: the less busy of 2 random pods) |
| ``epp`` | Envoy + epp, its default profile (``epp serve --endpoint`` per pod) |
| ``epp-full-duplex`` | the same, response bodies through the routing stream (the old path) |
| ``epp-observed`` | the same, response bodies copied to epp by an observing filter |
| ``epp-timed`` | the same, no Lua response meter: TTFT from Envoy's access log, no tokens |
| ``epp-lean`` | the same, no response bodies (no TTFT or token metrics) |
| ``epp-buffered`` | the same as ``epp``, request bodies ``BUFFERED``: epp reads them, no echo |
| ``epp-reference`` | epp, the reference EPP's weights (``configs/reference.yaml``) |
| ``epp-load`` | epp, load scorers only: queue, KV, in-flight (``configs/load-only.yaml``) |
| ``epp-prefix`` | epp, the prefix-cache scorer only (``configs/prefix-only.yaml``) |

``run.py --epp-replicas N`` adds ``epp-Nx`` (N epp replicas behind the one Envoy, each on
its own view) and ``epp-Nx-sync`` (the same, sharing decisions through a redis-server the
contender starts: ``epp serve --sync-redis-url``), and ``epp-workersN-sync`` (one
``epp serve --workers N`` sharing the port); their CPU includes Redis's.

``run.py --epp-checkout NAME=DIR`` adds epp as another source tree has it (a previous
commit in a ``git worktree``), with the Envoy bootstrap that tree's own
``epp envoy-config`` prints: before and after a change, in one run.

``benchmarks/routing/peers.py``, when present, adds more through ``PEERS`` (see
:func:`load_peers`). Envoy runs with one worker thread (``--concurrency 1``): there are
two cores for everything, and one worker also gives ``LEAST_REQUEST`` a single, complete
view of the active requests. The first five epp rows differ only in Envoy's
``response_body_mode``: ``LOGGED`` (the default), ``FULL_DUPLEX_STREAMED``, ``OBSERVED``,
``TIMED`` and ``NONE``.
"""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import yaml

from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import (
    ManagedProcess,
    StackError,
    free_port,
    free_port_run,
    loopback_serve_args,
    start_envoy,
    start_epp_module,
    start_redis,
)

__all__ = [
    "CONFIGS",
    "PEERS_MODULE",
    "Contender",
    "EnvoyContender",
    "EppContender",
    "builtin_contenders",
    "descendants",
    "load_peers",
    "replica_contenders",
    "static_cluster_bootstrap",
    "wait_answers",
]

CONFIGS = Path(__file__).resolve().parent / "configs"
PEERS_MODULE = "benchmarks.routing.peers"


@runtime_checkable
class Contender(Protocol):
    name: str

    def start(self, pods: Sequence[str], model: str, workdir: Path) -> str:
        """Start routing to ``pods`` (host:port) for ``model``; return the base URL
        ("http://127.0.0.1:PORT") once it is ready. Logs and files go under ``workdir``."""
        ...

    def stop(self) -> None:
        """Stop every process ``start`` started; safe to call twice or after a failed start."""
        ...

    def processes(self) -> dict[str, list[int]]:
        """The running router's processes by role ("epp", "envoy", ...): their CPU is
        the router's cost per request."""
        ...


def static_cluster_bootstrap(
    pods: Sequence[str], *, lb_policy: str, listen_port: int, admin_port: int
) -> dict[str, Any]:
    """Envoy without ext_proc, its one cluster holding every pod, balanced by ``lb_policy``."""
    bootstrap = envoy_bootstrap(
        EnvoyPorts(listen_port=listen_port, admin_port=admin_port),
        ext_proc=False,
        static_upstream=pods[0],
    )
    cluster = bootstrap["static_resources"]["clusters"][0]
    cluster["lb_policy"] = lb_policy
    endpoints = []
    for pod in pods:
        host, _, port = pod.rpartition(":")
        endpoints.append(
            {
                "endpoint": {
                    "address": {"socket_address": {"address": host, "port_value": int(port)}}
                }
            }
        )
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": endpoints}]
    return bootstrap


class _Processes:
    def __init__(self) -> None:
        self.started: list[ManagedProcess] = []

    def stop(self) -> None:
        while self.started:
            self.started.pop().stop()

    def processes(self) -> dict[str, list[int]]:
        roles: dict[str, list[int]] = {}
        for process in self.started:
            pid = process.process.pid
            # Worker processes (epp serve --workers) are children of the one started.
            roles.setdefault(process.name, []).extend([pid, *descendants(pid)])
        return roles


class EnvoyContender(_Processes):
    """Envoy alone, load-balancing a static cluster of the pods."""

    def __init__(self, name: str, lb_policy: str) -> None:
        super().__init__()
        self.name = name
        self.lb_policy = lb_policy

    def start(self, pods: Sequence[str], model: str, workdir: Path) -> str:
        listen, admin = free_port(), free_port()
        bootstrap = static_cluster_bootstrap(
            pods, lb_policy=self.lb_policy, listen_port=listen, admin_port=admin
        )
        self.started.append(start_envoy(bootstrap, admin_port=admin, log_dir=workdir))
        return f"http://127.0.0.1:{listen}"


class EppContender(_Processes):
    """Envoy + ``epp serve`` (full-duplex ext_proc, ORIGINAL_DST), one ``--endpoint`` per pod.

    ``replicas`` epp processes sit behind the one Envoy (its epp cluster holds them all);
    ``sync`` starts a redis-server and has them share decisions through it; ``workers``
    is ``epp serve --workers``. ``config_file`` replaces the default profile;
    ``extra_args`` go to ``epp serve`` (e.g. ``--refresh-metrics-interval``);
    ``envoy_options`` to
    :func:`epp.envoy_config.envoy_bootstrap` (e.g. ``response_body_mode``).
    """

    def __init__(
        self,
        name: str,
        config_file: Path | None = None,
        extra_args: Sequence[str] = (),
        envoy_options: dict[str, Any] | None = None,
        checkout: Path | None = None,
        *,
        replicas: int = 1,
        sync: bool = False,
        workers: int = 1,
    ) -> None:
        super().__init__()
        self.name = name
        self.replicas = replicas
        self.sync = sync
        self.workers = workers
        self.config_file = config_file
        self.extra_args = list(extra_args)
        self.envoy_options = dict(envoy_options or {})
        self.checkout = checkout

    def start(self, pods: Sequence[str], model: str, workdir: Path) -> str:
        extra = list(self.extra_args)
        if self.sync:
            redis_port = free_port()
            self.started.append(start_redis(redis_port, log_dir=workdir))
            extra += ["--sync-redis-url", f"redis://127.0.0.1:{redis_port}/0"]
        if self.workers > 1:
            extra += ["--workers", str(self.workers)]
        grpc_ports = []
        for replica in range(self.replicas):
            grpc, metrics = free_port(), free_port_run(self.workers)
            args = [*loopback_serve_args(grpc, metrics), "--log-level", "warning", *extra]
            if self.config_file is not None:
                args += ["--config-file", str(self.config_file)]
            for pod in pods:
                args += ["--endpoint", f"{pod}={model}"]
            log_dir = workdir / f"replica-{replica}" if self.replicas > 1 else workdir
            log_dir.mkdir(parents=True, exist_ok=True)
            epp = start_epp_module("epp", args, log_dir=log_dir, checkout=self.checkout)
            self.started.append(epp)
            for port in range(metrics, metrics + self.workers):  # worker i: metrics + i
                epp.wait_until(
                    functools.partial(_pods_ready, port, len(pods)),
                    timeout_s=30,
                    what=f"all {len(pods)} pods ready in epp",
                )
            grpc_ports.append(grpc)
        listen, admin = free_port(), free_port()
        while admin == listen:  # the kernel may hand out a just-released port again
            admin = free_port()
        ports = EnvoyPorts(
            listen_port=listen,
            admin_port=admin,
            epp_port=grpc_ports[0],
            more_epp_ports=tuple(grpc_ports[1:]),
        )
        if self.checkout is not None:
            bootstrap = _checkout_bootstrap(self.checkout, ports)
        else:
            bootstrap = envoy_bootstrap(ports, **self.envoy_options)
        self.started.append(start_envoy(bootstrap, admin_port=admin, log_dir=workdir))
        return f"http://127.0.0.1:{listen}"


def _checkout_bootstrap(checkout: Path, ports: EnvoyPorts) -> dict[str, Any]:
    """The Envoy bootstrap ``epp envoy-config`` of another source tree prints."""
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "epp",
            "envoy-config",
            "--listen-port",
            str(ports.listen_port),
            "--admin-port",
            str(ports.admin_port),
            "--epp-port",
            str(ports.epp_port),
        ],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    bootstrap: dict[str, Any] = yaml.safe_load(printed)
    return bootstrap


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name, in parentheses, may hold spaces: split after it.
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _pods_ready(metrics_port: int, pods: int) -> bool:
    return _ready_pods(metrics_port) >= pods


def _ready_pods(metrics_port: int) -> int:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=1
        ) as response:
            text = response.read().decode()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("inference_pool_ready_pods"):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def replica_contenders(replicas: int, epp_args: Sequence[str] = ()) -> list[Contender]:
    """epp as ``replicas`` replicas behind one Envoy, alone and sharing state, and as one
    ``epp serve --workers`` of as many processes."""
    return [
        EppContender(f"epp-{replicas}x", None, epp_args, replicas=replicas),
        EppContender(f"epp-{replicas}x-sync", None, epp_args, replicas=replicas, sync=True),
        EppContender(f"epp-workers{replicas}-sync", None, epp_args, sync=True, workers=replicas),
    ]


def builtin_contenders(epp_args: Sequence[str] = ()) -> list[Contender]:
    """The built-in contenders, in the order the tables show them."""
    return [
        EnvoyContender("envoy-rr", "ROUND_ROBIN"),
        EnvoyContender("envoy-lr", "LEAST_REQUEST"),
        EppContender("epp", None, epp_args),
        EppContender(
            "epp-full-duplex", None, epp_args, {"response_body_mode": "FULL_DUPLEX_STREAMED"}
        ),
        EppContender("epp-observed", None, epp_args, {"response_body_mode": "OBSERVED"}),
        EppContender("epp-timed", None, epp_args, {"response_body_mode": "TIMED"}),
        EppContender("epp-lean", None, epp_args, {"response_body_mode": "NONE"}),
        EppContender("epp-buffered", None, epp_args, {"body_mode": "BUFFERED"}),
        EppContender("epp-reference", CONFIGS / "reference.yaml", epp_args),
        EppContender("epp-load", CONFIGS / "load-only.yaml", epp_args),
        EppContender("epp-prefix", CONFIGS / "prefix-only.yaml", epp_args),
    ]


def load_peers(
    import_module: Callable[[str], ModuleType] = importlib.import_module,
) -> tuple[list[Contender], str | None]:
    """Contenders from ``benchmarks/routing/peers.py``'s ``PEERS``, and a note if none.

    ``PEERS`` may hold contenders, classes, or factories (callables returning one).
    """
    try:
        module = import_module(PEERS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != PEERS_MODULE:
            raise
        return [], "benchmarks/routing/peers.py is absent: sglang-router and vllm-router skipped"
    peers = getattr(module, "PEERS", None)
    if not peers:
        return [], "benchmarks/routing/peers.py exports no PEERS: peer routers skipped"
    out: list[Contender] = []
    for item in peers:
        contender = item() if isinstance(item, type) or not hasattr(item, "start") else item
        if not isinstance(contender, Contender):
            raise TypeError(f"PEERS item {item!r} is not a Contender")
        out.append(contender)
    return out, None


def wait_answers(
    url: str, model: str, timeout_s: float = 30.0, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Block until one small chat request through ``url`` succeeds (a readiness probe)."""
    body = (
        b'{"model": "%s", "max_tokens": 1, "messages": [{"role": "user", '
        b'"content": "ready?"}]}' % model.encode()
    )
    deadline = time.monotonic() + timeout_s
    last: str = ""
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            url + "/v1/chat/completions", data=body, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        sleep(0.2)
    raise StackError(f"{url} did not answer a chat request in {timeout_s:.0f}s: {last}")
