"""sglang-router and vllm-router, each with policy ``cache_aware``, as routing contenders.

Both are Rust routers shipped in PyPI wheels. Each installs on first use into its own
virtualenv, ``~/.cache/epp-bench/peers/<dist>-<version>/`` (``$EPP_BENCH_PEERS_DIR``, else
``$XDG_CACHE_HOME/epp-bench/peers``), with ``python -m venv`` and pip, pinned, once: later
runs reuse it (a marker file says the install finished; a lock keeps two runs from
installing at once). Each took 12-15 s and 130-150 MB here. Call ``install()`` ahead of a
timed run to keep pip out of it.

Command lines (``python -m <module>`` from the peer's virtualenv; ``--help`` lists the rest)::

    sglang-router 0.3.2:  python -m sglang_router.launch_router
        --host 127.0.0.1 --port P --worker-urls http://POD ...
        --policy cache_aware --cache-threshold 0.3 --balance-abs-threshold 64
        --balance-rel-threshold 1.5 --eviction-interval-secs 60 --max-tree-size 67108864
        --prometheus-host 127.0.0.1 --prometheus-port P2 --log-level warn
        --worker-startup-check-interval 1 --shutdown-grace-period-secs 5
    vllm-router 0.1.17:   python -m vllm_router.launch_router
        (the same flags, except: --eviction-interval-secs 120 --max-tree-size 33554432,
        --log-level warning, no --shutdown-grace-period-secs)

``cache_aware`` is the same algorithm in both (vllm-router forked sglang's): an
approximate radix tree of what each worker was sent. If load is imbalanced (max - min
in-flight > ``balance_abs_threshold`` and max > ``balance_rel_threshold`` x min) a request
goes to the least-loaded worker; else to the worker with the longest match if
match/length > ``cache_threshold``, else again to the least-loaded worker (ties go to
one fixed worker, so cold prefixes that arrive one at a time all land on the same one).
Every knob is each router's own default, passed explicitly so logs and this docstring say
what ran.
sglang-router keys its tree on the request's text, per model (from the workers'
``/server_info``). vllm-router 0.1.17 keys it on token ids: for every request it asks every
worker for ``POST /v1/chat/completions/render`` (``/tokenize`` if that is missing) and,
with neither, routes without prefix matching; it never asks for the model.

What the pods must answer (``vllm_sim.server`` and ``vllm_sim.peer_api``): ``/health``
(both, at start and every 60 s), ``/server_info`` and ``/model_info`` (sglang-router, once
per worker), the render endpoints (vllm-router, per request, on every worker). ``start``
refuses to run vllm-router against pods without render, since its ``cache_aware`` would
not be cache-aware. sglang-router also probes each worker once with an HTTP/2 preface
(gRPC detection), which aiohttp logs as a bad request; harmless.

Fairness, checked with ``strace -f -e trace=connect,setsockopt`` while 20 streaming chats
(4 groups sharing 3 KB system prompts) went through each router to 3 simulated pods:

- connection reuse: both pool HTTP/1.1 keep-alive connections per worker (reqwest): 4-6
  connections per pod for the whole run, registration and health checks included;
- TCP_NODELAY: reqwest sets it on every worker connection (there is no flag for it);
- no limits in the way: sglang-router's ``--max-concurrent-requests`` defaults to -1
  (off); vllm-router's to 32768 (its token bucket refills at that rate per second), far
  above any offered load here; request timeouts are both 1800 s;
- quiet logs: warnings only (vllm-router still prints its startup), to
  ``<workdir>/<dist>.log``; Prometheus on a free loopback port (sglang-router always
  serves it; the default 0.0.0.0:29000 would collide);
- proxies: ``NO_PROXY`` covers loopback, since reqwest would honour ``HTTP_PROXY``;
- no hub downloads: sglang-router loads a tokenizer only for a worker whose ``/model_info``
  or ``/server_info`` names a ``model_path``/``tokenizer_path`` (the simulator names none);
  vllm-router tokenizes in the router only for ``grpc://`` workers. ``HF_HUB_OFFLINE=1``
  and ``TRANSFORMERS_OFFLINE=1`` are set besides. Neither router connected anywhere but
  the pods (no DNS, no hub, no telemetry);
- retries (5, on 408/429/5xx) and circuit breakers stay at their defaults: the simulator
  does not fail requests, so they never fire;
- both run tokio with one worker thread per core (2 here), while the Envoy contenders run
  one worker thread; that is each router's normal deployment and left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from benchmarks.routing.contenders import descendants
from epp.stack import ManagedProcess, StackError, free_port

__all__ = [
    "PEERS",
    "PeerPackage",
    "PeerRouter",
    "SglangRouter",
    "VllmRouter",
    "peers_root",
]

SGLANG_ROUTER = "0.3.2"
VLLM_ROUTER = "0.1.17"
_MARKER = ".epp-bench-installed"
_INSTALL_TIMEOUT_S = 600.0
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def peers_root() -> Path:
    """Where peer virtualenvs live (outside the repository)."""
    explicit = os.environ.get("EPP_BENCH_PEERS_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "epp-bench" / "peers"


@dataclass(frozen=True, slots=True)
class PeerPackage:
    """A router distributed on PyPI, installed into a virtualenv of its own."""

    dist: str
    version: str
    module: str  # run as `python -m module`

    @property
    def spec(self) -> str:
        return f"{self.dist}=={self.version}"

    def venv(self, root: Path | None = None) -> Path:
        return (root or peers_root()) / f"{self.dist}-{self.version}"

    def python(self, root: Path | None = None) -> Path:
        return self.venv(root) / "bin" / "python"

    def installed(self, root: Path | None = None) -> bool:
        marker = self.venv(root) / _MARKER
        return marker.is_file() and marker.read_text().strip() == self.spec

    def install(
        self, root: Path | None = None, *, log: Callable[[str], None] | None = None
    ) -> Path:
        """Create the virtualenv and pip-install the pinned package, unless done before.

        Returns the virtualenv's python. Safe to call from several processes at once.
        """
        venv = self.venv(root)
        venv.parent.mkdir(parents=True, exist_ok=True)
        with _locked(venv.parent / f".{venv.name}.lock"):
            if self.installed(root):
                return self.python(root)
            if venv.exists():  # an install that did not finish
                shutil.rmtree(venv)
            say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
            say(f"installing {self.spec} into {venv} (once)")
            started = time.monotonic()
            _run([sys.executable, "-m", "venv", str(venv)])
            _run(
                [
                    str(self.python(root)),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--no-input",
                    "--disable-pip-version-check",
                    self.spec,
                ]
            )
            (venv / _MARKER).write_text(self.spec + "\n")
            say(f"installed {self.spec} in {time.monotonic() - started:.1f}s")
        return self.python(root)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: Sequence[str]) -> None:
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=_INSTALL_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(
            f"{' '.join(argv)} failed ({result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-4000:]}"
        )


def _pod_url(pod: str) -> str:
    return pod if pod.startswith(("http://", "https://")) else f"http://{pod}"


def _get_json(url: str, timeout_s: float = 1.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def _healthy_workers(base_url: str) -> int:
    """``healthy_workers`` from the router's ``/readiness`` (both routers have it)."""
    try:
        body = _get_json(base_url + "/readiness")
    except (OSError, ValueError):
        return -1
    if isinstance(body, dict) and isinstance(body.get("healthy_workers"), int):
        return int(body["healthy_workers"])
    return -1


def _terminate(pids: Sequence[int], timeout_s: float = 10.0) -> None:
    """SIGTERM ``pids``, then SIGKILL those still alive after ``timeout_s``."""
    alive = list(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if _running(pid)]
            time.sleep(0.05)
        if not alive:
            return


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; its parent reaps it


def _router_env() -> dict[str, str]:
    no_proxy = [
        p for p in os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")).split(",") if p
    ]
    no_proxy += [h for h in _LOOPBACK if h not in no_proxy]
    joined = ",".join(no_proxy)
    return {
        "NO_PROXY": joined,
        "no_proxy": joined,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_COLOR": "1",
    }


class PeerRouter:
    """A peer router as a :class:`benchmarks.routing.contenders.Contender`.

    ``policy_args`` override the ``cache_aware`` knobs (flag without ``--`` -> value);
    ``extra_args`` are appended to the command line; ``command_prefix`` wraps it (e.g.
    ``["strace", "-f", "-o", "trace"]``); ``root`` is where virtualenvs live.
    """

    name: str = ""
    package: ClassVar[PeerPackage]
    # Each router's own defaults, passed explicitly.
    default_policy_args: ClassVar[dict[str, str]] = {}
    log_level: ClassVar[str] = "warn"

    def __init__(
        self,
        *,
        policy_args: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        command_prefix: Sequence[str] = (),
        root: Path | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.policy_args = {**self.default_policy_args, **(policy_args or {})}
        self.extra_args = list(extra_args)
        self.command_prefix = list(command_prefix)
        self.root = root
        self.ready_timeout_s = ready_timeout_s
        self.process: ManagedProcess | None = None
        self.url: str | None = None
        self.metrics_url: str | None = None

    def install(self) -> Path:
        """Install the router if needed; return its virtualenv's python."""
        return self.package.install(self.root)

    def argv(self, python: Path, pods: Sequence[str], port: int, metrics_port: int) -> list[str]:
        args = [
            str(python),
            "-m",
            self.package.module,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--worker-urls",
            *(_pod_url(p) for p in pods),
            "--policy",
            "cache_aware",
        ]
        for flag, value in self.policy_args.items():
            args += [f"--{flag}", value]
        args += [
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            str(metrics_port),
            "--log-level",
            self.log_level,
            # The pods are up before start(): no 30 s wait between startup probes.
            "--worker-startup-check-interval",
            "1",
        ]
        return [*self.command_prefix, *args, *self.extra_args]

    def check_pods(self, pods: Sequence[str], model: str) -> None:
        """Raise if the pods lack what this router needs to route as designed."""

    def start(self, pods: Sequence[str], model: str, workdir: Path) -> str:
        if self.process is not None:
            raise StackError(f"{self.name} is already running")
        if not pods:
            raise StackError(f"{self.name}: no pods to route to")
        python = self.install()
        self.check_pods(pods, model)
        workdir.mkdir(parents=True, exist_ok=True)
        port, metrics_port = free_port(), free_port()
        url = f"http://127.0.0.1:{port}"
        process = ManagedProcess(
            self.package.dist,
            self.argv(python, pods, port, metrics_port),
            log_dir=workdir,
            env=_router_env(),
        )
        self.process = process
        try:
            process.wait_until(
                lambda: _healthy_workers(url) >= len(pods),
                timeout_s=self.ready_timeout_s,
                what=f"{len(pods)} healthy workers at {url}/readiness",
            )
        except BaseException:
            self.stop()
            raise
        self.url = url
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        return url

    def processes(self) -> dict[str, list[int]]:
        if self.process is None:
            return {}
        pid = self.process.process.pid
        return {self.package.dist: [pid, *descendants(pid)]}

    def stop(self) -> None:
        process, self.process = self.process, None
        self.url = self.metrics_url = None
        if process is None:
            return
        # With a command_prefix (strace, time) the router is a grandchild, which a
        # SIGTERM to the wrapper can leave running: stop what is left of the tree too.
        leftovers = descendants(process.process.pid)
        process.stop()
        _terminate(leftovers)


class SglangRouter(PeerRouter):
    """sglang-router (the SGLang Model Gateway), HTTP regular mode, ``cache_aware``."""

    name = "sglang-router cache_aware"
    package: ClassVar[PeerPackage] = PeerPackage(
        "sglang-router", SGLANG_ROUTER, "sglang_router.launch_router"
    )
    default_policy_args: ClassVar[dict[str, str]] = {
        "cache-threshold": "0.3",
        "balance-abs-threshold": "64",
        "balance-rel-threshold": "1.5",
        "eviction-interval-secs": "60",
        "max-tree-size": str(2**26),
    }
    log_level: ClassVar[str] = "warn"

    def argv(self, python: Path, pods: Sequence[str], port: int, metrics_port: int) -> list[str]:
        args = super().argv(python, pods, port, metrics_port)
        # Its default waits up to 180 s for in-flight requests on SIGTERM; stop() waits 10.
        return [*args, "--shutdown-grace-period-secs", "5"]


class VllmRouter(PeerRouter):
    """vllm-router, regular (non-disaggregated) mode, ``cache_aware``."""

    name = "vllm-router cache_aware"
    package: ClassVar[PeerPackage] = PeerPackage(
        "vllm-router", VLLM_ROUTER, "vllm_router.launch_router"
    )
    default_policy_args: ClassVar[dict[str, str]] = {
        "cache-threshold": "0.3",
        "balance-abs-threshold": "64",
        "balance-rel-threshold": "1.5",
        "eviction-interval-secs": "120",
        "max-tree-size": str(2**25),
    }
    log_level: ClassVar[str] = "warning"

    def check_pods(self, pods: Sequence[str], model: str) -> None:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "ping"}]})
        request = urllib.request.Request(
            _pod_url(pods[0]) + "/v1/chat/completions/render",
            data=body.encode(),
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                ok = isinstance(json.loads(response.read()).get("token_ids"), list)
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise StackError(
                f"{self.name}: pod {pods[0]} does not answer POST /v1/chat/completions/render "
                "with token_ids; vllm-router's cache_aware would route without prefix "
                "matching (vllm_sim.peer_api provides it)"
            )


PEERS: list[Callable[[], PeerRouter]] = [SglangRouter, VllmRouter]
