"""A soak run: steady load through Envoy -> epp -> simulated pods, while pods and epp die.

    python -m benchmarks.soak                     # what `make soak` runs: 30 minutes
    python -m benchmarks.soak --duration 20s --pods 2 --kills 1

The stack is `make run`'s: a real Envoy with epp as its ext_proc endpoint picker (`epp
serve` with static ``--endpoint``s), and simulated vLLM pods, each in an ``epp sim``
process of its own so it can be killed and started again on the same port. For
``--duration`` an async httpx client sends chat requests open-loop at ``--rate`` per
second, each with a prompt of its own (``--prompt-bytes``, 16 KB; half of them streamed).
Meanwhile, on a schedule (:func:`plan`), a pod is SIGKILLed and started again
``--down-for`` seconds later, pod after pod, and once, in the middle of the run, epp gets
SIGTERM and is started again on the same ports. Every few seconds the RSS of epp and of
Envoy is read from /proc.

At the end it prints a table (RSS over time, requests by outcome, recovery times) and
writes the whole report as JSON to ``benchmarks/results/soak-<timestamp>.json``. How
failures are classified is in :mod:`benchmarks.soak_report`. The exit status is 1 when a
request was lost unexpectedly, when an epp process ended its life with more than
``--rss-limit`` times the RSS it had after warm-up, or when a kill or restart could not be
carried out; 0 otherwise. Process logs stay in ``--log-dir`` (a temp dir by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop

from benchmarks.soak_report import Event, RequestRecord, RssSample, markdown, summarize
from benchmarks.workloads.text import BYTES_PER_TOKEN, pseudo_text
from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import (
    ManagedProcess,
    StackError,
    free_port,
    loopback_serve_args,
    start_envoy,
    start_epp_module,
)

__all__ = ["PlannedFault", "SoakConfig", "main", "parse_duration", "plan"]

RESULTS = Path(__file__).resolve().parent / "results"
_POLL_S = 0.05
FILE_ACCESS_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


@dataclass(frozen=True, slots=True)
class SoakConfig:
    duration_s: float = 1800.0
    rate: float = 20.0  # requests per second, open loop
    pods: int = 4
    prompt_bytes: int = 16 * 1024
    max_tokens: int = 64
    stream_share: float = 0.5
    kill_interval_s: float = 120.0  # one pod kill per this much of the faulty stretch
    kills: int | None = None  # instead of kill_interval_s
    down_s: float = 10.0  # a killed pod is started again this long after the kill
    rss_interval_s: float = 5.0
    warmup_s: float | None = None  # None: min(60 s, 15 % of the duration)
    rss_limit: float = 1.5  # epp's end RSS / its RSS after warm-up
    request_timeout_s: float = 60.0
    model: str = "soak-model"

    @property
    def warmup(self) -> float:
        return self.warmup_s if self.warmup_s is not None else min(60.0, 0.15 * self.duration_s)


@dataclass(frozen=True, slots=True)
class PlannedFault:
    t_s: float
    kind: str  # "pod_kill" or "epp_restart"
    pod: int  # index of the pod; -1 for epp


def plan(config: SoakConfig) -> list[PlannedFault]:
    """When to kill which pod, and when to restart epp.

    Nothing happens during the warm-up nor during as long a tail at the end. The stretch
    between is cut into equal slots, one per kill plus one for epp's restart, which takes
    the middle slot; each fault happens in the middle of its slot, pods taking turns.
    There are ``config.kills`` kills, or one per ``kill_interval_s``, and at least one
    per pod. Raises ValueError when the slots are too short for a pod to come back.
    """
    warmup = config.warmup
    active = config.duration_s - 2 * warmup
    kills = (
        config.kills
        if config.kills is not None
        else max(config.pods, int(active // config.kill_interval_s))
    )
    slots = kills + 1
    spacing = active / slots if active > 0 else 0.0
    if spacing < config.down_s + 2.0:
        raise ValueError(
            f"{kills} pod kills and an epp restart do not fit in {config.duration_s:.0f}s "
            f"with {config.down_s:.0f}s down each: make the run longer or use fewer --kills"
        )
    epp_slot = slots // 2
    faults: list[PlannedFault] = []
    pod = 0
    for slot in range(slots):
        t = warmup + (slot + 0.5) * spacing
        if slot == epp_slot:
            faults.append(PlannedFault(t, "epp_restart", -1))
        else:
            faults.append(PlannedFault(t, "pod_kill", pod % config.pods))
            pod += 1
    return faults


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``30m``, ``20s``, ``1.5h``, ``500ms`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration (e.g. 30m, 20s): {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def stable_port() -> int:
    """A free port below the kernel's ephemeral range, if it has room there.

    A killed pod's port is bound again seconds later; a port in the ephemeral range could
    meanwhile become the local end of some outgoing connection (the client's, Envoy's),
    and the restart would fail with "address in use".
    """
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        candidates = [
            p
            for p in random.sample(range(10_000, max(10_000, low)), min(200, max(0, low - 10_000)))
            if p not in _HANDED_OUT
        ]
        for port in candidates:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    return free_port()


_HANDED_OUT: set[int] = set()


def vm_rss_kib(pid: int) -> int | None:
    """The VmRSS of ``pid`` in KiB, None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class Stack:
    """Envoy, epp and one ``epp sim`` process per pod; knows how to kill and restart them."""

    def __init__(
        self, config: SoakConfig, log_dir: Path, sim_args: Sequence[str], epp_args: Sequence[str]
    ) -> None:
        self.config = config
        self.log_dir = log_dir
        self.sim_args = list(sim_args)
        self.pods = [f"127.0.0.1:{stable_port()}" for _ in range(config.pods)]
        self.pod_procs: list[ManagedProcess | None] = [None] * config.pods
        self._pod_starts = [0] * config.pods
        self.grpc_port, self.metrics_port = stable_port(), stable_port()
        self.epp_argv = [
            *loopback_serve_args(self.grpc_port, self.metrics_port),
            "--log-format",
            "json",
            *epp_args,
        ]
        for pod in self.pods:
            self.epp_argv += ["--endpoint", f"{pod}={config.model}"]
        self.epp: ManagedProcess | None = None
        self.epp_incarnation = -1
        self.envoy: ManagedProcess | None = None
        self.access_log = log_dir / "envoy-access.log"
        self.url = ""
        self.expected_down: set[str] = set()  # what the soak itself stopped

    # Synchronous start, from the main thread (Envoy dies with the thread that started it).
    def start(self) -> None:
        for n in range(len(self.pods)):
            self.pod_procs[n] = self._spawn_pod(n)
        for n, pod in enumerate(self.pods):
            proc = self.pod_procs[n]
            assert proc is not None
            proc.wait_http(f"http://{pod}/health")
        epp = self._spawn_epp()
        epp.wait_http(f"http://127.0.0.1:{self.metrics_port}/readyz")
        epp.wait_until(self._all_pods_ready, timeout_s=30, what="every pod ready in epp")
        ports = EnvoyPorts(
            listen_port=stable_port(), admin_port=stable_port(), epp_port=self.grpc_port
        )
        bootstrap = envoy_bootstrap(ports)
        _add_access_log(bootstrap, self.access_log)
        self.envoy = start_envoy(bootstrap, admin_port=ports.admin_port, log_dir=self.log_dir)
        self.url = f"http://127.0.0.1:{ports.listen_port}"

    def _all_pods_ready(self) -> bool:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return False
        for line in text.splitlines():
            if line.startswith("inference_pool_ready_pods"):
                return float(line.rsplit(" ", 1)[1]) >= len(self.pods)
        return False

    def _spawn_pod(self, n: int) -> ManagedProcess:
        self._pod_starts[n] += 1
        name = f"pod{n}-{self._pod_starts[n]}"
        args = ["sim", *self.sim_args, "--pod", f"{self.pods[n]}={self.config.model}"]
        return start_epp_module(name, args, log_dir=self.log_dir)

    def _spawn_epp(self) -> ManagedProcess:
        self.epp_incarnation += 1
        self.epp = start_epp_module(
            f"epp-{self.epp_incarnation}", self.epp_argv, log_dir=self.log_dir
        )
        return self.epp

    async def kill_pod(self, n: int) -> None:
        proc = self.pod_procs[n]
        assert proc is not None
        self.expected_down.add(self.pods[n])
        proc.process.kill()
        await asyncio.to_thread(proc.stop)

    async def start_pod(self, n: int, client: httpx.AsyncClient) -> str | None:
        """Start pod ``n`` again; None once it answers /health, else why not."""
        problem: str | None = "not started"
        for _ in range(3):
            proc = self._spawn_pod(n)
            self.pod_procs[n] = proc
            problem = await _wait_http(client, f"http://{self.pods[n]}/health", proc, 30.0)
            if problem is None:
                self.expected_down.discard(self.pods[n])
                return None
            await asyncio.to_thread(proc.stop)
            await asyncio.sleep(1.0)
        return problem

    async def stop_epp(self, grace_s: float) -> int | None:
        epp = self.epp
        assert epp is not None
        self.expected_down.add("epp")
        epp.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(epp.process.wait, grace_s)
        except subprocess.TimeoutExpired:  # it did not drain in time
            epp.process.kill()
        return await asyncio.to_thread(epp.stop)

    async def start_epp(self, client: httpx.AsyncClient) -> str | None:
        epp = self._spawn_epp()
        problem = await _wait_http(
            client, f"http://127.0.0.1:{self.metrics_port}/readyz", epp, 60.0
        )
        if problem is None:
            self.expected_down.discard("epp")
        return problem

    def crashed(self) -> list[tuple[str, str]]:
        """Processes that exited without the soak stopping them: (name, status and log)."""
        found: list[tuple[str, str]] = []
        watched: list[tuple[str, ManagedProcess | None]] = [
            ("envoy", self.envoy),
            ("epp", self.epp),
        ]
        watched += list(zip(self.pods, self.pod_procs, strict=True))
        for name, proc in watched:
            if proc is None or name in self.expected_down:
                continue
            code = proc.process.poll()
            if code is not None:
                self.expected_down.add(name)  # report once
                found.append((name, f"exited with {code}: {proc.log_tail(5)}"))
        return found

    def stop(self) -> int | None:
        """Stop everything; epp's exit status."""
        code = None
        if self.envoy is not None:
            self.envoy.stop()
        if self.epp is not None:
            code = self.epp.stop()
        for proc in self.pod_procs:
            if proc is not None:
                proc.stop()
        return code


def _add_access_log(bootstrap: dict[str, Any], path: Path) -> None:
    """One JSON line per request: the soak's id, the upstream Envoy chose, how it ended."""
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_ACCESS_LOG,
                "path": str(path),
                "log_format": {
                    "json_format": {
                        "id": "%REQ(X-SOAK-ID)%",
                        "upstream": "%UPSTREAM_HOST%",
                        "status": "%RESPONSE_CODE%",
                        "flags": "%RESPONSE_FLAGS%",
                        "details": "%RESPONSE_CODE_DETAILS%",
                        "request_id": "%REQ(X-REQUEST-ID)%",
                    }
                },
            },
        }
    ]


async def _wait_http(
    client: httpx.AsyncClient, url: str, proc: ManagedProcess, timeout_s: float
) -> str | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            return f"{proc.name} exited with {proc.process.returncode}: {proc.log_tail(5)}"
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(url, timeout=1.0)).status_code == 200:
                return None
        await asyncio.sleep(_POLL_S)
    return f"{url} not ready after {timeout_s:.0f}s"


class Soak:
    """One run: the load, the faults and the RSS sampler, on one event loop."""

    def __init__(self, config: SoakConfig, stack: Stack) -> None:
        self.config = config
        self.stack = stack
        self.records: list[RequestRecord] = []
        self.events: list[Event] = []
        self.samples: list[RssSample] = []
        self.t0 = 0.0
        self.stopping = asyncio.Event()
        self._tag = f"{time.time_ns():x}"

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, kind: str, target: str, detail: str = "") -> None:
        self.events.append(Event(kind, round(self.now(), 4), target, detail))

    async def run(self) -> float:
        """Run the load, faults and sampling; the run's end in seconds from its start."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=128)
        timeout = httpx.Timeout(self.config.request_timeout_s, connect=5.0)
        async with (
            httpx.AsyncClient(base_url=self.stack.url, limits=limits, timeout=timeout) as client,
            httpx.AsyncClient() as control,
        ):
            self.t0 = time.monotonic()
            side = [asyncio.create_task(self._faults(control)), asyncio.create_task(self._sample())]
            await self._load(client)
            end = self.now()
            for task in side:
                task.cancel()
            for task in side:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # A fault still in progress (cancelled above) must not leave a pod or epp down.
            await self._restore(control)
        return end

    async def _load(self, client: httpx.AsyncClient) -> None:
        config = self.config
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        next_progress = 60.0
        while not self.stopping.is_set():
            t = n / config.rate
            if t >= config.duration_s:
                break
            delay = t - self.now()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                continue
            stream = math.floor((n + 1) * config.stream_share) > math.floor(n * config.stream_share)
            record = RequestRecord(
                index=n, request_id=f"soak-{self._tag}-{n}", stream=stream, sent_s=0.0
            )
            self.records.append(record)
            task = asyncio.create_task(self._request(client, record))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            if t >= next_progress:
                next_progress += 60.0
                self._progress()
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=config.request_timeout_s + 5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for record in self.records:
            if record.end_s is None:  # cancelled above: it never finished
                record.end_s = self.now()
                record.error = record.error or "unfinished when the run ended"

    def _progress(self) -> None:
        done = [r for r in self.records if r.end_s is not None]
        failed = sum(1 for r in done if not r.ok)
        epp = self.samples[-1].epp_kib if self.samples else None
        rss = "-" if epp is None else f"{epp / 1024:.0f} MiB"
        print(
            f"soak: {self.now():.0f}s sent {len(self.records)}, done {len(done)}, "
            f"failed {failed}, epp RSS {rss}",
            file=sys.stderr,
            flush=True,
        )

    def _body(self, record: RequestRecord) -> bytes:
        tokens = self.config.prompt_bytes // BYTES_PER_TOKEN
        # The request's own words from the first byte on: no prompt shares a prefix block.
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": pseudo_text(record.request_id, tokens)}],
            "max_tokens": self.config.max_tokens,
            "stream": record.stream,
        }
        if record.stream:
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    async def _request(self, client: httpx.AsyncClient, record: RequestRecord) -> None:
        body = self._body(record)
        headers = {
            "content-type": "application/json",
            "x-request-id": record.request_id,
            "x-soak-id": record.request_id,
        }
        record.sent_s = self.now()
        try:
            async with client.stream(
                "POST", "/v1/chat/completions", content=body, headers=headers
            ) as response:
                record.headers_s = self.now()
                record.status = response.status_code
                record.pod = response.headers.get("x-sim-pod")
                data = await response.aread()
            record.end_s = self.now()
            record.error = self._check(record, data)
            if record.error is not None:
                record.body = data[:300].decode(errors="replace")
        except Exception as exc:  # every failure is data here, whatever raised it
            record.end_s = self.now()
            record.error = f"{type(exc).__name__}: {exc}"[:300]

    def _check(self, record: RequestRecord, data: bytes) -> str | None:
        if record.status != 200:
            return f"http {record.status}"
        if record.pod is None:
            return "200 without x-sim-pod"
        if record.stream:
            return None if data.endswith(b"data: [DONE]\n\n") else "stream ended early"
        try:
            usage = orjson.loads(data)["usage"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return "response body is not a completion"
        if usage.get("completion_tokens") != self.config.max_tokens:
            return f"completion_tokens {usage.get('completion_tokens')}"
        return None

    async def _faults(self, client: httpx.AsyncClient) -> None:
        for fault in plan(self.config):
            delay = fault.t_s - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                if fault.kind == "pod_kill":
                    await self._kill_and_restart(fault.pod, client)
                else:
                    await self._restart_epp(client)
            except Exception as exc:  # reported, and the run goes on
                self.event("fault_error", fault.kind, f"{type(exc).__name__}: {exc}")

    async def _kill_and_restart(self, n: int, client: httpx.AsyncClient) -> None:
        pod = self.stack.pods[n]
        self.event("pod_kill", pod)
        await self.stack.kill_pod(n)
        await asyncio.sleep(self.config.down_s)
        self.event("pod_start", pod)
        problem = await self.stack.start_pod(n, client)
        if problem is None:
            self.event("pod_ready", pod)
        else:
            self.event("fault_error", pod, problem)

    async def _restart_epp(self, client: httpx.AsyncClient) -> None:
        self.event("epp_stop", "epp")
        code = await self.stack.stop_epp(grace_s=30.0)
        self.event("epp_exit", "epp", str(code))
        self.event("epp_start", "epp")
        problem = await self.stack.start_epp(client)
        if problem is None:
            self.event("epp_ready", "epp")
        else:
            self.event("fault_error", "epp", problem)

    async def _restore(self, client: httpx.AsyncClient) -> None:
        for n, proc in enumerate(self.stack.pod_procs):
            if proc is None or proc.process.poll() is not None:
                self.event("pod_start", self.stack.pods[n], "after the load")
                if await self.stack.start_pod(n, client) is None:
                    self.event("pod_ready", self.stack.pods[n], "after the load")
        epp = self.stack.epp
        if epp is None or epp.process.poll() is not None:
            self.event("epp_start", "epp", "after the load")
            if await self.stack.start_epp(client) is None:
                self.event("epp_ready", "epp", "after the load")

    async def _sample(self) -> None:
        while True:
            epp, envoy = self.stack.epp, self.stack.envoy
            epp_kib = None
            if epp is not None and epp.process.poll() is None:
                epp_kib = vm_rss_kib(epp.process.pid)
            envoy_kib = vm_rss_kib(envoy.process.pid) if envoy is not None else None
            self.samples.append(
                RssSample(round(self.now(), 3), epp_kib, envoy_kib, self.stack.epp_incarnation)
            )
            for name, detail in self.stack.crashed():
                self.event("crash", name, detail)
            await asyncio.sleep(self.config.rss_interval_s)


def routed_to(
    access_log: Path, epp_logs: Sequence[Path]
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The pod each request was sent to (Envoy's upstream, else epp's endpoint) and epp's
    log lines per request id."""
    pods: dict[str, str] = {}
    lines_by_id: dict[str, list[str]] = {}
    for path in epp_logs:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                entry = _json_line(line)
                rid = entry.get("request_id") if entry else None
                if not isinstance(rid, str):
                    continue
                lines_by_id.setdefault(rid, []).append(line[:1000])
                endpoint = entry.get("endpoint") if entry else None
                if isinstance(endpoint, str) and endpoint:
                    pods.setdefault(rid, endpoint.split(",")[0])
    with contextlib.suppress(OSError):
        for line in access_log.read_text(errors="replace").splitlines():
            entry = _json_line(line)
            if (
                entry
                and isinstance(entry.get("id"), str)
                and entry.get("upstream") not in (None, "", "-")
            ):
                pods[entry["id"]] = str(entry["upstream"])
    return pods, lines_by_id


def _json_line(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _parser() -> argparse.ArgumentParser:
    defaults = SoakConfig()
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--duration",
        type=parse_duration,
        default=defaults.duration_s,
        help="how long the load runs (default: 30m)",
    )
    p.add_argument("--rate", type=float, default=defaults.rate, help="requests per second")
    p.add_argument("--pods", type=int, default=defaults.pods)
    p.add_argument("--prompt-bytes", type=int, default=defaults.prompt_bytes)
    p.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    p.add_argument(
        "--stream-share",
        type=float,
        default=defaults.stream_share,
        help="share of streamed requests, 0 to 1",
    )
    p.add_argument(
        "--kill-interval",
        type=parse_duration,
        default=defaults.kill_interval_s,
        help="one pod kill per this much of the run (at least one per pod)",
    )
    p.add_argument("--kills", type=int, default=None, help="exactly this many pod kills")
    p.add_argument(
        "--down-for",
        type=parse_duration,
        default=defaults.down_s,
        help="how long a killed pod stays down",
    )
    p.add_argument("--rss-interval", type=parse_duration, default=defaults.rss_interval_s)
    p.add_argument(
        "--warmup",
        type=parse_duration,
        default=None,
        help="RSS baseline after this long (default: min(60s, 15%% of the run))",
    )
    p.add_argument(
        "--rss-limit",
        type=float,
        default=defaults.rss_limit,
        help="fail when epp's RSS ends above this multiple of its warm-up RSS",
    )
    p.add_argument("--request-timeout", type=parse_duration, default=defaults.request_timeout_s)
    p.add_argument(
        "--sim-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="an extra `epp sim` argument (repeatable, e.g. --sim-arg=--time-scale --sim-arg=0.5)",
    )
    p.add_argument(
        "--epp-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="an extra `epp serve` argument (repeatable)",
    )
    p.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="where the processes' logs go (default: a new temp dir)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the JSON report (default: benchmarks/results/soak-<timestamp>.json)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = SoakConfig(
        duration_s=args.duration,
        rate=args.rate,
        pods=args.pods,
        prompt_bytes=args.prompt_bytes,
        max_tokens=args.max_tokens,
        stream_share=args.stream_share,
        kill_interval_s=args.kill_interval,
        kills=args.kills,
        down_s=args.down_for,
        rss_interval_s=args.rss_interval,
        warmup_s=args.warmup,
        rss_limit=args.rss_limit,
        request_timeout_s=args.request_timeout,
    )
    if config.pods < 2 or config.rate <= 0 or not 0 <= config.stream_share <= 1:
        print("soak: need --pods >= 2, --rate > 0 and --stream-share in [0, 1]", file=sys.stderr)
        return 2
    try:
        faults = plan(config)
    except ValueError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir: Path = args.log_dir or Path(tempfile.mkdtemp(prefix=f"epp-soak-{stamp}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    out: Path = args.out or RESULTS / f"soak-{stamp}.json"

    stack = Stack(config, log_dir, args.sim_arg, args.epp_arg)
    print(
        f"soak: {config.duration_s:.0f}s at {config.rate} req/s, {config.pods} pods, "
        f"{sum(f.kind == 'pod_kill' for f in faults)} pod kills, 1 epp restart; "
        f"logs in {log_dir}",
        file=sys.stderr,
        flush=True,
    )
    soak = Soak(config, stack)
    try:
        try:
            stack.start()
        except StackError as exc:
            print(f"soak: the stack did not start: {exc}", file=sys.stderr)
            return 1
        end_s = uvloop.run(soak.run())
        interrupted = soak.stopping.is_set()
        time.sleep(1.5)  # Envoy flushes its access log every second
    finally:
        epp_exit = stack.stop()
    pods_by_id, epp_lines = routed_to(stack.access_log, sorted(log_dir.glob("epp-*.log")))
    failed_ids = {r.request_id for r in soak.records if not r.ok}
    report_config: dict[str, Any] = {
        **asdict(config),
        "warmup_s": config.warmup,
        "log_dir": str(log_dir),
        "pod_addresses": stack.pods,
        "sim_args": args.sim_arg,
        "epp_args": args.epp_arg,
        "interrupted": interrupted,
        "epp_final_exit": epp_exit,
        "planned": {"pod_kills": sum(f.kind == "pod_kill" for f in faults), "epp_restarts": 1},
        "faults": [asdict(f) for f in faults],
    }
    if interrupted:
        report_config["planned"] = {"pod_kills": 0, "epp_restarts": 0}
    report = summarize(
        config=report_config,
        records=soak.records,
        events=soak.events,
        routed_to=pods_by_id,
        samples=soak.samples,
        end_of_run_s=end_s,
        epp_log_lines={k: v for k, v in epp_lines.items() if k in failed_ids},
    )
    if interrupted:
        report["passed"] = False
        report["reasons"].append("interrupted")
    if epp_exit not in (0, None):
        report["passed"] = False
        report["reasons"].append(f"epp exited with {epp_exit} on the final SIGTERM")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    print(f"wrote {out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
