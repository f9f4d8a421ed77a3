"""What scraping a fleet of pods costs epp, and what it does to the request path.

Two parts, each side by side in one run:

1. **Scrape CPU.** A child process serves N simulated pods (8, 64, 256) on consecutive
   ports; another child runs epp's ``MetricsScraper`` over them at the default 50 ms
   interval and measures its own CPU (``time.process_time``) over a window, after a
   warm-up. Contenders, in interleaved rounds (the table shows medians):

     aiohttp   the scraper with the aiohttp client it had before (``aiohttp_fetch``
               below: the same session settings), i.e. the cost of the old client round
     http1     the scraper on the loop (``--scrape-mode inline``), with the client of
               ``epp/datalayer/http1_client.py``
     process   the scraper process (``epp/datalayer/scrape_process.py``, the default):
               CPU of both processes, the child's read from /proc
     HEAD      with ``--before-tree DIR``: the whole scraper of another checkout, e.g.
               ``git worktree add /tmp/epp-before HEAD`` before the change

   ``--contenders http1,HEAD`` runs only those. Polls are counted by the scraper's
   ``polls_total`` (a scraper without it, through its ``sleep`` seam).

   Columns: polls/s reached (N x 20 when the pods keep up), CPU per poll (µs), and the
   share of one core at the *nominal* rate (CPU per poll x N x 20/s), which is what the
   issue's bound is about even when the pod server falls behind.

2. **Request latency.** ``epp serve`` (a child, from this tree or ``--before-tree``)
   scrapes 8 or 256 pods while this process drives ext_proc streams at a steady rate
   (``--rps``, default 50/s), each the way Envoy sends a buffered-body chat request:
   request headers, body, response headers. Latency is from the first message sent to
   the routing decision received, its p50 and p99 over all rounds' requests together;
   epp's CPU is read from ``/proc/PID/stat``, its scraper process's included ("routing
   %": the routing process alone). CPU per request is all of it over the requests; CPU
   per poll what the 256 pods' polls added over the 8 pods' run (polls counted by
   ``epp_scraper_polls_total``, or the nominal 20/s per pod for an epp without it).
   ``--pods-nice 10`` runs the pod server at lower priority: in a cluster the pods'
   CPU is on other nodes, on 2 shared cores it competes with epp. ``--cpu-split`` goes
   further: the driver and epp's routing process on CPU 0, the pod server and epp's
   scraper process on CPU 1, so the p99s compare what scraping does to the routing
   loop rather than how short of CPU two cores are with 256 busy pods on them.
   ``--unscraped-pods 256`` adds runs whose 256 pods are scraped once, at start (their
   metrics kept fresh): the same scheduling over 256 endpoints with no polls under way,
   so "vs unscraped" is what scraping itself does to the request path.
   ``--scraping-neighbour`` gives those runs ("once+nb") a second epp that scrapes the
   same pods as usual, no requests, all of it on CPU 1: the pods' core as busy as in a
   scraped run, so what is left of "vs unscraped" is the measured epp's own scraping
   (the states it applies), not the load its scraping puts on the other core.
   ``--request-pod-server idle`` serves idle pods here, so that only the pods epp routes
   to have work (its own in-flight requests) and the scraper's idle pace applies;
   ``--epp-args "--scrape-idle-interval 1s"`` passes flags to this tree's epp only.

The pod servers (``--pod-server``):

  fast   (default) a small asyncio server in one child process that answers every GET
         with the page ``epp sim`` sends for epp's ``name[]`` filter (802 bytes), its
         numbers changing on every answer (a busy pod: no page is ever the same as the
         last, so the scraper's unchanged-page shortcut never applies). One process
         serves 256 pods x 20 polls/s on these machines; ``epp sim`` cannot.
  idle   the same, with the numbers fixed (an idle pod; the shortcut applies)
  sim    ``epp sim --pods N --first-port P --model m`` (aiohttp, idle pods): the real
         simulator, which falls behind well before 256 pods x 20/s on 2 shared cores.

Run::

    python benchmarks/bench_scrape_fleet.py                       # both parts
    python benchmarks/bench_scrape_fleet.py --pods 8,64 --pod-server sim --skip-requests
    git worktree add /tmp/epp-before HEAD~3 &&
        python benchmarks/bench_scrape_fleet.py --before-tree /tmp/epp-before

Profile a scraping epp while part 2 runs (or any ``epp serve``); ``--nonblocking``, or
py-spy stops the process at every sample and the latencies measured are its own::

    py-spy record -p PID -d 15 -r 200 --nonblocking -f raw -o /tmp/scrape.raw
    py-spy record -p PID -d 15 --nonblocking -f speedscope -o /tmp/scrape.json  # --native: C

PID is the ``epp serve`` child (``pgrep -f "epp serve"``); with the default scrape mode
its scraper is a child of that (``pgrep -f scrape_worker``), to be profiled on its own.
What it showed (late 2026, 256 busy pods, the scraper still on the routing loop): of the
main thread's busy samples 69 % scraping (``http1_client`` data_received 32 % of all
samples, ``MetricsScraper._poll`` 14 %, ``PageShape.read_metrics`` 15 %), 24 % the
loop itself (uvloop and grpc.aio in C), 7 % ext_proc and routing. A routing decision
waited behind scrape callbacks; hence the scraper process (``--scrape-mode process``).

Prints tables and writes benchmarks/results/scrape_fleet.json. Timings on shared 2-core
machines are noisy; read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scrape_fleet.json"
INTERVAL_S = 0.05
MODEL = "m"

# The page `epp sim` sends for the scraper's name[] filter; {w} {r} {kv} vary when busy.
PAGE = (
    "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{{model_name="m",engine="0"}} {r}\n'
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{{model_name="m",engine="0"}} {w}\n'
    "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    'vllm:kv_cache_usage_perc{{model_name="m",engine="0"}} {kv}\n'
    "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
    "# TYPE vllm:cache_config_info gauge\n"
    'vllm:cache_config_info{{block_size="16",cache_dtype="auto",enable_prefix_caching="True",'
    'engine="0",gpu_memory_utilization="0.9",num_cpu_blocks="None",num_gpu_blocks="27500"}}'
    " 1.0\n"
)


# -- the pod servers -------------------------------------------------------------------


def serve_fast_pods(first_port: int, count: int, busy: bool) -> None:
    """Child process: ``count`` pods on consecutive ports, until stdin closes."""
    import uvloop

    counter = 0

    def answer() -> bytes:
        nonlocal counter
        counter += 1
        i = counter if busy else 0
        body = PAGE.format(r=f"{i % 8}.0", w=f"{i % 5}.0", kv=f"{(i % 97) / 100}").encode()
        head = (
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nServer: Python/3.11 aiohttp/3.14.5\r\n\r\n"
        )
        return head.encode() + body

    class Pod(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                self.buffer = self.buffer[end + 4 :]
                self.transport.write(answer())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = [
            await loop.create_server(Pod, "127.0.0.1", first_port + i, backlog=64)
            for i in range(count)
        ]
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent goes
        for server in servers:
            server.close()

    uvloop.run(main())


class PodFleet:
    """The pod server child process of ``kind`` (fast, idle, sim) for ``count`` pods."""

    def __init__(self, kind: str, count: int, first_port: int, nice: int = 0) -> None:
        self.kind, self.count, self.first_port = kind, count, first_port
        if kind == "sim":
            argv = [
                sys.executable,
                "-m",
                "epp",
                "sim",
                "--pods",
                str(count),
                "--first-port",
                str(first_port),
                "--model",
                MODEL,
            ]
        else:
            argv = [
                sys.executable,
                __file__,
                "_pods",
                str(first_port),
                str(count),
                "busy" if kind == "fast" else "idle",
            ]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        if kind != "sim":
            assert self.process.stdout is not None
            if self.process.stdout.readline().strip() != b"ready":
                raise RuntimeError("the pod server did not start")
        else:
            _wait_http(f"http://127.0.0.1:{first_port + count - 1}/metrics", 30.0)

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{self.first_port + i}" for i in range(self.count)]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self.kind == "sim":
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _wait_http(url: str, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# -- part 1: the scraper in a child process -----------------------------------------------


def aiohttp_fetch(max_body_bytes: int) -> tuple[Callable[[str, str], Awaitable[bytes]], Any]:
    """The GET of the scraper before http1_client: one aiohttp session, as configured then."""
    import aiohttp

    from epp.datalayer.errors import ScrapeError

    connector = aiohttp.TCPConnector(limit=256, limit_per_host=2, keepalive_timeout=4.0)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        headers={"Accept-Encoding": "identity"},
        trust_env=False,
    )

    async def fetch(address: str, target: str) -> bytes:
        url = f"http://{address}{target}"
        try:
            async with asyncio.timeout(1.0), session.get(url) as response:
                if response.status != 200:
                    raise ScrapeError(f"GET {url}: HTTP {response.status}")
                length = response.content_length
                if length is not None and length > max_body_bytes:
                    raise ScrapeError(f"GET {url}: body over the limit")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                    if size > max_body_bytes:
                        raise ScrapeError(f"GET {url}: body over the limit")
                    chunks.append(chunk)
                return b"".join(chunks)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ScrapeError(f"GET {url}: {exc!r}") from exc

    return fetch, session


def scrape_child(client: str, addresses: list[str], warmup_s: float, window_s: float) -> None:
    """Child process: scrape ``addresses`` every 50 ms; print one JSON line."""
    import uvloop

    from epp.datalayer.scraper import MetricsScraper
    from epp.datalayer.store import EndpointStore

    async def main() -> dict[str, Any]:
        polls = 0

        async def counting_sleep(delay: float) -> None:
            nonlocal polls
            polls += 1  # the polling loop sleeps once per poll
            await asyncio.sleep(delay)

        store = EndpointStore()
        store.replace([(address, None) for address in addresses])
        extra: dict[str, Any] = {}
        session = None
        if client == "aiohttp":
            extra["fetch"], session = aiohttp_fetch(4 * 1024 * 1024)
        # A scraper that counts its polls is left to pace itself (a `sleep` seam would
        # switch it to one task per pod); an older one is counted through `sleep`.
        counted = hasattr(MetricsScraper(EndpointStore()), "polls_total")
        if not counted:
            extra["sleep"] = counting_sleep
        scraper: Any
        if client == "process":
            from epp.datalayer.scrape_process import ProcessScraper

            scraper = ProcessScraper(store, interval_s=INTERVAL_S, timeout_s=1.0)
        else:
            scraper = MetricsScraper(store, interval_s=INTERVAL_S, timeout_s=1.0, **extra)

        def count() -> int:
            return int(scraper.polls_total) if counted else polls

        def cpu() -> float:
            # This process, and the scraper process where there is one.
            child = getattr(scraper, "pid", None)
            return time.process_time() + (_proc_cpu_s(child) if child else 0.0)

        await scraper.start()
        await asyncio.sleep(warmup_s)
        polls_0, errors_0 = count(), sum(e.scrape_errors_total for e in store.all())
        cpu_0, wall_0 = cpu(), time.perf_counter()
        await asyncio.sleep(window_s)
        cpu_1, wall_1 = cpu(), time.perf_counter()
        polls_1, errors_1 = count(), sum(e.scrape_errors_total for e in store.all())
        await scraper.stop()
        if session is not None:
            await session.close()
        return {
            "polls": polls_1 - polls_0,
            "cpu_s": cpu_1 - cpu_0,
            "wall_s": wall_1 - wall_0,
            "errors": errors_1 - errors_0,
        }

    print(json.dumps(uvloop.run(main())), flush=True)


def run_scrape(
    tree: Path, client: str, fleet: PodFleet, warmup_s: float, window_s: float
) -> dict[str, Any]:
    argv = [
        sys.executable,
        __file__,
        "_scrape",
        client,
        str(warmup_s),
        str(window_s),
        ",".join(fleet.addresses),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        argv,
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
        timeout=warmup_s + window_s + 60,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def part_scrape(
    args: argparse.Namespace, contenders: dict[str, tuple[Path, str]]
) -> list[dict[str, Any]]:
    from epp.stack import free_port_run

    rows = []
    for count in args.pods:
        fleet = PodFleet(args.pod_server, count, free_port_run(count))
        try:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
            for round_ in range(args.rounds):
                # Alternate the order so drift on a noisy machine hits all alike.
                names = list(contenders) if round_ % 2 == 0 else list(reversed(contenders))
                for name in names:
                    tree, client = contenders[name]
                    run = run_scrape(tree, client, fleet, args.warmup_s, args.window_s)
                    runs[name].append(run)
                    print(
                        f"  {count:>4} pods  {name:<8} round {round_ + 1}: "
                        f"{run['polls'] / run['wall_s']:7.0f} polls/s "
                        f"{run['cpu_s'] / max(run['polls'], 1) * 1e6:6.0f} µs/poll "
                        f"errors {run['errors']}",
                        flush=True,
                    )
        finally:
            fleet.close()
        for name, results in runs.items():
            per_poll = statistics.median(r["cpu_s"] / max(r["polls"], 1) for r in results)
            rows.append(
                {
                    "pods": count,
                    "contender": name,
                    "pod_server": args.pod_server,
                    "polls_per_s": statistics.median(r["polls"] / r["wall_s"] for r in results),
                    "nominal_polls_per_s": count / INTERVAL_S,
                    "cpu_us_per_poll": per_poll * 1e6,
                    "core_share_nominal": per_poll * count / INTERVAL_S,
                    "core_share_measured": statistics.median(
                        r["cpu_s"] / r["wall_s"] for r in results
                    ),
                    "errors": sum(r["errors"] for r in results),
                    "rounds": len(results),
                }
            )
    return rows


def print_scrape_table(rows: list[dict[str, Any]]) -> None:
    print()
    header = (
        f"{'pods':>5}  {'client':<8}{'polls/s':>9}{'CPU/poll':>11}{'core % @50ms':>14}"
        f"{'core % seen':>13}{'vs aiohttp':>12}"
    )
    print(header)
    print("-" * len(header))
    base = {r["pods"]: r["cpu_us_per_poll"] for r in rows if r["contender"] == "aiohttp"}
    for r in rows:
        ratio = (
            f"{base[r['pods']] / r['cpu_us_per_poll']:>11.2f}x"
            if r["pods"] in base and r["cpu_us_per_poll"]
            else f"{'-':>12}"
        )
        print(
            f"{r['pods']:>5}  {r['contender']:<8}{r['polls_per_s']:>9.0f}"
            f"{r['cpu_us_per_poll']:>9.0f}µs{r['core_share_nominal'] * 100:>13.1f}%"
            f"{r['core_share_measured'] * 100:>12.1f}%{ratio}"
        )


# -- part 2: the request path ---------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and every live process below it (epp's scraper process)."""
    total = 0.0
    for member in {pid} | _descendants(pid):
        try:
            total += _proc_cpu_s(member)
        except OSError:
            pass
    return total


def _descendants(pid: int) -> set[int]:
    """``pid``'s live child processes, and theirs."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (sched_setaffinity binds one thread only)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except OSError:
            pass  # a thread that ended meanwhile


def _scraper_polls(metrics_port: int) -> int | None:
    """epp's ``epp_scraper_polls_total``, or None for an epp that has no such metric."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("epp_scraper_polls_total "):
                return int(float(line.split()[1]))
    return None


async def drive_requests(grpc_port: int, rps: float, seconds: float) -> list[float]:
    """Latencies (s) of ext_proc routing decisions at a steady ``rps``."""
    import grpc
    from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
    from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
    from envoy.service.ext_proc.v3.external_processor_pb2 import (
        HttpBody,
        HttpHeaders,
        ProcessingRequest,
        ProcessingResponse,
        ProtocolConfiguration,
    )

    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say something about scraping. " * 40}],
        }
    ).encode()
    headers = ProcessingRequest(
        request_headers=HttpHeaders(
            headers=HeaderMap(
                headers=[
                    HeaderValue(key=k, raw_value=v.encode())
                    for k, v in (
                        (":method", "POST"),
                        (":path", "/v1/chat/completions"),
                        (":authority", "gw"),
                        ("content-type", "application/json"),
                        ("content-length", str(len(body))),
                        ("x-request-id", "bench"),
                    )
                ]
            )
        ),
        protocol_config=ProtocolConfiguration(
            request_body_mode=ProcessingMode.BUFFERED, response_body_mode=ProcessingMode.NONE
        ),
    )
    body_msg = ProcessingRequest(request_body=HttpBody(body=body, end_of_stream=True))
    response_headers = ProcessingRequest(
        response_headers=HttpHeaders(
            headers=HeaderMap(headers=[HeaderValue(key=":status", raw_value=b"200")]),
            end_of_stream=True,
        )
    )
    latencies: list[float] = []
    failures = 0

    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        call_factory = channel.stream_stream(
            "/envoy.service.ext_proc.v3.ExternalProcessor/Process",
            request_serializer=ProcessingRequest.SerializeToString,
            response_deserializer=ProcessingResponse.FromString,
        )

        async def one(record: bool) -> None:
            nonlocal failures
            call = call_factory()
            started = time.perf_counter()
            try:
                await call.write(headers)
                await call.read()  # the empty HeadersResponse (buffered mode)
                await call.write(body_msg)
                decision = await call.read()  # BodyResponse with the destination
                elapsed = time.perf_counter() - started
                await call.write(response_headers)
                await call.read()
                await call.done_writing()
            except grpc.aio.AioRpcError:
                failures += 1  # an overloaded epp may cancel streams: counted, not fatal
                return
            if decision.WhichOneof("response") != "request_body":
                failures += 1
            elif record:
                latencies.append(elapsed)

        for _ in range(20):  # warm the channel and epp's code paths
            await one(False)
        tasks = set()
        period = 1.0 / rps
        start = time.perf_counter()
        for i in range(int(rps * seconds)):
            delay = start + i * period - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(one(True))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    if failures:
        print(f"    {failures} streams got no routing decision", flush=True)
    return latencies


def run_epp(
    tree: Path,
    fleet: PodFleet,
    count: int,
    rps: float,
    seconds: float,
    settle_s: float,
    extra_args: list[str],
    cpu_split: bool = False,
    neighbour: bool = False,
) -> dict[str, Any]:
    from epp.stack import free_port, loopback_serve_args

    def start(args: list[str]) -> tuple[subprocess.Popen[bytes], int, int]:
        grpc_port, metrics_port = free_port(), free_port()
        argv = [
            sys.executable,
            "-m",
            "epp",
            *loopback_serve_args(grpc_port, metrics_port),
            "--log-level",
            "warning",
            *args,
        ]
        for address in fleet.addresses[:count]:
            argv += ["--endpoint", f"{address}={MODEL}"]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        started = subprocess.Popen(
            argv, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _wait_http(f"http://127.0.0.1:{metrics_port}/metrics", 30.0)
        return started, grpc_port, metrics_port

    # The neighbour: another epp scraping the same pods as usual, no requests, all of it
    # on the pods' core: what that core carries in a scraped run, without the measured
    # epp doing any of the scraping.
    other = start([])[0] if neighbour else None
    try:
        process, grpc_port, metrics_port = start(extra_args)
    except BaseException:
        if other is not None:
            other.kill()
        raise
    try:
        time.sleep(settle_s)  # every pod scraped, polls spread out
        if other is not None:
            for member in {other.pid} | _descendants(other.pid):
                _pin(member, {1})
        if cpu_split:
            # The routing process with the driver; its scraper process with the pods.
            _pin(process.pid, {0})
            for child in _descendants(process.pid):
                _pin(child, {1})
        polls_0 = _scraper_polls(metrics_port)
        routing_0 = _proc_cpu_s(process.pid)
        cpu_0, wall_0 = _tree_cpu_s(process.pid), time.perf_counter()
        latencies = asyncio.run(drive_requests(grpc_port, rps, seconds))
        cpu_1, wall_1 = _tree_cpu_s(process.pid), time.perf_counter()
        routing_1 = _proc_cpu_s(process.pid)
        polls_1 = _scraper_polls(metrics_port)
    finally:
        for started in (process, *([other] if other is not None else [])):
            started.terminate()
            try:
                started.wait(timeout=10)
            except subprocess.TimeoutExpired:
                started.kill()
    latencies.sort()
    return {
        "latencies": latencies,
        "requests": len(latencies),
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": _percentile(latencies, 0.99) * 1e3,
        "epp_core_share": (cpu_1 - cpu_0) / (wall_1 - wall_0),
        # The routing process alone (its scraper process left out).
        "routing_core_share": (routing_1 - routing_0) / (wall_1 - wall_0),
        # Measured by epp's counter where it has one, else the nominal rate (busy pods).
        "polls_per_s": (polls_1 - polls_0) / (wall_1 - wall_0)
        if polls_0 is not None and polls_1 is not None
        else count / INTERVAL_S,
    }


# `epp serve` flags for a run whose pods are scraped once, at start: their metrics stay
# fresh, so scheduling takes the same path over them, and no poll runs while requests do.
UNSCRAPED_ARGS = [
    "--refresh-metrics-interval",
    "60s",
    "--scrape-idle-interval",
    "60s",
    "--metrics-staleness-threshold",
    "1h",
]


def part_requests(args: argparse.Namespace, trees: dict[str, Path]) -> list[dict[str, Any]]:
    from epp.stack import free_port_run

    top = max(args.request_pods + args.unscraped_pods)
    kind = args.request_pod_server or args.pod_server
    fleet = PodFleet(kind, top, free_port_run(top), nice=args.pods_nice)
    if args.cpu_split:
        _pin(os.getpid(), {0})
        _pin(fleet.process.pid, {1})
    rows = []
    configs = [(n, True) for n in args.request_pods] + [(n, False) for n in args.unscraped_pods]
    try:
        runs: dict[tuple[str, int, bool], list[dict[str, Any]]] = {}
        for round_ in range(args.rounds):
            order = [(name, n, scraped) for name in trees for n, scraped in configs]
            if round_ % 2:
                order.reverse()
            for name, count, scraped in order:
                extra = args.epp_args.split() if name == "new" else []
                run = run_epp(
                    trees[name],
                    fleet,
                    count,
                    args.rps,
                    args.request_s,
                    args.warmup_s,
                    extra + ([] if scraped else UNSCRAPED_ARGS),
                    cpu_split=args.cpu_split,
                    neighbour=args.scraping_neighbour and not scraped,
                )
                runs.setdefault((name, count, scraped), []).append(run)
                print(
                    f"  epp {name:<6} {count:>4} pods{'' if scraped else ' (unscraped)'} "
                    f"round {round_ + 1}: p50 {run['p50_ms']:.2f} ms  p99 "
                    f"{run['p99_ms']:.2f} ms  epp CPU {run['epp_core_share'] * 100:.0f} %",
                    flush=True,
                )
    finally:
        fleet.close()
    for (name, count, scraped), results in runs.items():
        pooled = sorted(x for r in results for x in r.pop("latencies"))
        rows.append(
            {
                "epp": name,
                "pods": count,
                "scraped": scraped,
                "neighbour": args.scraping_neighbour and not scraped,
                "pod_server": kind,
                "rps": args.rps,
                "pods_nice": args.pods_nice,
                "cpu_split": args.cpu_split,
                "requests": sum(r["requests"] for r in results),
                # Percentiles of all rounds' requests together: one round's p99 is its
                # 5th-slowest request of 500, which moves by a third from round to round.
                "p50_ms": _percentile(pooled, 0.50) * 1e3,
                "p99_ms": _percentile(pooled, 0.99) * 1e3,
                "p99_ms_rounds": [round(r["p99_ms"], 3) for r in results],
                "epp_core_share": statistics.median(r["epp_core_share"] for r in results),
                "routing_core_share": statistics.median(r["routing_core_share"] for r in results),
                "polls_per_s": statistics.median(r["polls_per_s"] for r in results),
                "rounds": len(results),
            }
        )
    return rows


def print_request_table(rows: list[dict[str, Any]]) -> None:
    print()
    header = (
        f"{'epp':<8}{'pods':>5}{'scraped':>9}{'requests':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'epp CPU %':>11}{'routing %':>11}{'CPU/req':>10}{'CPU/poll':>10}"
        f"{'p99 vs fewest pods':>20}{'vs unscraped':>14}"
    )
    print(header)
    print("-" * len(header))
    fewest: dict[str, dict[str, Any]] = {}
    unscraped: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        if not r["scraped"]:
            unscraped[r["epp"], r["pods"]] = r
        elif r["epp"] not in fewest or r["pods"] < fewest[r["epp"]]["pods"]:
            fewest[r["epp"]] = r
    for r in rows:
        scraped = r["scraped"]
        base = fewest.get(r["epp"], r)
        ratio = f"{r['p99_ms'] / base['p99_ms']:>19.2f}x" if scraped else f"{'-':>20}"
        quiet = unscraped.get((r["epp"], r["pods"])) if scraped else None
        against_quiet = f"{r['p99_ms'] / quiet['p99_ms']:>13.2f}x" if quiet else f"{'-':>14}"
        # CPU per request: all of epp's CPU (scraping included) over the requests; per
        # poll: what the extra pods' polls added over the fewest pods' run.
        per_request_ms = r["epp_core_share"] / r["rps"] * 1e3
        extra_polls = r["polls_per_s"] - base["polls_per_s"]
        per_poll = (
            f"{(r['epp_core_share'] - base['epp_core_share']) / extra_polls * 1e6:>8.0f}µs"
            if scraped and extra_polls > 0
            else f"{'-':>10}"
        )
        print(
            f"{r['epp']:<8}{r['pods']:>5}{_scraped_label(r):>9}{r['requests']:>10}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['epp_core_share'] * 100:>10.1f}%"
            f"{r['routing_core_share'] * 100:>10.1f}%"
            f"{per_request_ms:>8.2f}ms{per_poll}{ratio}{against_quiet}"
        )
    # One bad round moves the pooled p99 (a round's p99 moves by a third on its own):
    # the same ratio round by round, each run against the other run of its round.
    for r in rows:
        base = fewest.get(r["epp"], r)
        pairs = [(base, "the fewest pods")] if r["scraped"] and base is not r else []
        quiet = unscraped.get((r["epp"], r["pods"])) if r["scraped"] else None
        if quiet is not None:
            pairs.append((quiet, "unscraped"))
        for against, what in pairs:
            ratios = [
                a / b
                for a, b in zip(r["p99_ms_rounds"], against["p99_ms_rounds"], strict=True)
                if b > 0
            ]
            if ratios:
                print(
                    f"{r['epp']} {r['pods']} pods: p99 against {what}, round by round: median "
                    f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x)"
                )


def _scraped_label(row: dict[str, Any]) -> str:
    if row["scraped"]:
        return "50ms"
    return "once+nb" if row.get("neighbour") else "once"


# -- main ---------------------------------------------------------------------------------


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_pods":
        serve_fast_pods(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "busy")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_scrape":
        scrape_child(sys.argv[2], sys.argv[5].split(","), float(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=_ints, default=[8, 64, 256])
    parser.add_argument("--request-pods", type=_ints, default=[8, 256])
    parser.add_argument(
        "--unscraped-pods",
        type=_ints,
        default=[],
        help="also run with these many pods scraped once, at start (part 2): the cost of "
        "scheduling over them without the scraping",
    )
    parser.add_argument(
        "--scraping-neighbour",
        action="store_true",
        help="the unscraped runs get a second epp that scrapes the same pods, all of it on "
        "CPU 1 (with --cpu-split): the pods' core as loaded as in a scraped run",
    )
    parser.add_argument("--pod-server", choices=("fast", "idle", "sim"), default="fast")
    parser.add_argument(
        "--request-pod-server",
        choices=("fast", "idle", "sim"),
        default=None,
        help="the pod server of part 2 (default: --pod-server); with idle, "
        "only the pods epp routes to have work (its own in-flight)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--rps", type=float, default=50.0)
    parser.add_argument("--request-s", type=float, default=10.0)
    parser.add_argument(
        "--before-tree",
        type=Path,
        default=None,
        help="another checkout to run as contender HEAD (git worktree add)",
    )
    parser.add_argument(
        "--contenders",
        default="aiohttp,http1,process,HEAD",
        help="which scrape contenders to run (part 1), comma-separated",
    )
    parser.add_argument(
        "--epp-args", default="", help="extra `epp serve` flags for this tree's epp in part 2"
    )
    parser.add_argument(
        "--pods-nice",
        type=int,
        default=0,
        help="part 2: run the pod server at this niceness, so that on a small machine "
        "the pods' CPU (on other nodes in a cluster) takes less from epp's",
    )
    parser.add_argument(
        "--cpu-split",
        action="store_true",
        help="part 2: pin this driver and epp's routing process to CPU 0, the pod server "
        "and epp's scraper process to CPU 1, as in a cluster where the pods run elsewhere "
        "and epp has a core to route on: what scraping does to routing, not to a "
        "machine short of CPU",
    )
    parser.add_argument("--skip-scrape", action="store_true")
    parser.add_argument("--skip-requests", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    contenders: dict[str, tuple[Path, str]] = {
        "aiohttp": (ROOT, "aiohttp"),
        "http1": (ROOT, "http1"),
        "process": (ROOT, "process"),
    }
    trees = {"new": ROOT}
    if args.before_tree is not None:
        contenders["HEAD"] = (args.before_tree.resolve(), "default")
        trees["HEAD"] = args.before_tree.resolve()
    wanted = set(args.contenders.split(","))
    contenders = {name: c for name, c in contenders.items() if name in wanted}
    print(
        f"pod server {args.pod_server} (requests: {args.request_pod_server or args.pod_server}); "
        f"{args.rounds} rounds; Python "
        f"{platform.python_version()}; {os.cpu_count()} CPUs",
        flush=True,
    )
    report: dict[str, Any] = {
        "benchmark": "scrape_fleet",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "interval_s": INTERVAL_S,
        "pod_server": args.pod_server,
        "warmup_s": args.warmup_s,
        "window_s": args.window_s,
        "before_tree": str(args.before_tree) if args.before_tree else None,
    }
    if not args.skip_scrape:
        report["scrape"] = part_scrape(args, contenders)
    if not args.skip_requests:
        report["requests"] = part_requests(args, trees)
    if "scrape" in report:
        print_scrape_table(report["scrape"])
    if "requests" in report:
        print_request_table(report["requests"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
