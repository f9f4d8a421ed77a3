"""What epp costs on the request path, side by side in one run through one Envoy.

Five ways to reach simulated pods (which answer at once):

  direct        the pod itself
  envoy         Envoy alone (static cluster)
  envoy+noop    Envoy + the least ext_proc processor there is: changes nothing, Envoy
                routes on a static cluster (benchmarks/noop_processor.py)
  envoy+fixed   Envoy + a processor that answers every request exactly as epp does, but
                always with the same pod: Envoy does all the routing work it does behind
                epp (header mutation, route re-match, metadata, ORIGINAL_DST)
  envoy+epp     Envoy + epp (FULL_DUPLEX_STREAMED body, ORIGINAL_DST routing), choosing
                among three pods with the default scorers
  pick          epp's Pick API alone, no HTTP: an asyncio client (epp.client, in this
                process) sends Pick then Finish for the same body; latency is Pick's
                round trip, req/s counts Pick+Finish pairs
  proxy+pick    examples/pick_proxy.py (aiohttp + httpx) routing with the Pick API, as
                a caller without Envoy would

epp minus fixed is epp's own cost; epp minus noop is the whole cost of picking. The epp
rows also show epp's CPU per request (user + system of its process, from /proc, over the
latency and throughput runs together).
One Envoy process serves every Envoy path, on one listener each. Latency is measured
with one connection sending requests back to back (wrk -c1); throughput with 32
connections. Rounds interleave the targets so drift on a noisy machine hits all alike;
the table shows medians over rounds. Every processor gets the same ext_proc modes:
responses stream through it (response_body_mode FULL_DUPLEX_STREAMED, what gateways set
for an InferencePool) unless --response-body-mode NONE. (epp envoy-config's default,
LOGGED, needs epp's access log service, which the other processors do not serve; the
routing benchmark compares the response modes.) epp logs at its default level (info: one line per
request) unless --epp-log-level says otherwise. Needs `wrk` (apt-get install wrk).

    python benchmarks/overhead.py [--seconds 5] [--rounds 3] [--prompt-chars 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from epp.client import PickClient, PickError
from epp.envoy_config import EnvoyPorts, envoy_bootstrap
from epp.stack import ManagedProcess, free_port, loopback_serve_args, start_envoy, start_epp_module

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"
MODEL = "bench-model"
TARGETS = ("direct", "envoy", "envoy+noop", "envoy+fixed", "envoy+epp", "pick", "proxy+pick")
# The rows whose requests epp handles: its CPU per request is measured for them.
EPP_TARGETS = ("envoy+epp", "pick", "proxy+pick")
PROXY = Path(__file__).resolve().parents[1] / "examples" / "pick_proxy.py"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per target")
    parser.add_argument("--prompt-chars", type=int, default=4000, help="chat prompt size")
    parser.add_argument("--connections", type=int, default=32, help="for the throughput runs")
    parser.add_argument(
        "--response-body-mode",
        choices=("FULL_DUPLEX_STREAMED", "NONE"),
        default="FULL_DUPLEX_STREAMED",
        help="ext_proc response_body_mode of every processor path",
    )
    parser.add_argument(
        "--epp-log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("overhead.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="epp-bench-"))
    processes: list[ManagedProcess] = []
    try:
        urls, epp_pid, epp_grpc = start_stack(
            work,
            processes,
            response_body_mode=args.response_body_mode,
            epp_log_level=args.epp_log_level,
        )
        body = json.dumps(
            {
                "model": MODEL,
                "max_tokens": 1,
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {
                        "role": "user",
                        "content": ("lorem ipsum " * args.prompt_chars)[: args.prompt_chars],
                    },
                ],
            }
        )
        (work / "body.json").write_text(body)
        script = work / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f'wrk.body = io.open("{work / "body.json"}"):read("*a")\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        for url in urls.values():  # warm every path (connections, caches, JIT-less imports)
            wrk(url, script, connections=4, seconds=1.0)
        pick_target = f"127.0.0.1:{epp_grpc}"
        asyncio.run(pick_load(pick_target, body.encode(), connections=4, seconds=1.0))

        def run(target: str, connections: int) -> dict[str, float]:
            if target == "pick":
                return asyncio.run(
                    pick_load(
                        pick_target, body.encode(), connections=connections, seconds=args.seconds
                    )
                )
            return wrk(urls[target], script, connections=connections, seconds=args.seconds)

        samples: dict[str, dict[str, list[float]]] = {
            t: {
                "p50_ms": [],
                "p99_ms": [],
                "seq_rps": [],
                "max_rps": [],
                "errors": [],
                "epp_cpu_ms_per_req": [],
            }
            for t in TARGETS
        }
        for round_index in range(args.rounds):
            for target in TARGETS:
                cpu_before = cpu_seconds(epp_pid)
                latency = run(target, 1)
                load = run(target, args.connections)
                cpu = cpu_seconds(epp_pid) - cpu_before
                row = samples[target]
                row["p50_ms"].append(latency["p50_ms"])
                row["p99_ms"].append(latency["p99_ms"])
                row["seq_rps"].append(latency["rps"])
                row["max_rps"].append(load["rps"])
                row["errors"].append(latency["errors"] + load["errors"])
                if target in EPP_TARGETS:
                    requests = latency["requests"] + load["requests"]
                    row["epp_cpu_ms_per_req"].append(1000 * cpu / max(1.0, requests))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for process in reversed(processes):
            process.stop()

    summary = {t: {k: statistics.median(v) for k, v in samples[t].items() if v} for t in TARGETS}
    print_table(summary, body_bytes=len(body), connections=args.connections)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "body_bytes": len(body),
                "seconds": args.seconds,
                "rounds": args.rounds,
                "connections": args.connections,
                "response_body_mode": args.response_body_mode,
                "epp_log_level": args.epp_log_level,
                "median": summary,
                "samples": samples,
            },
            indent=2,
        )
    )
    print(f"\nwrote {RESULTS}")
    return 0


def start_stack(
    work: Path,
    processes: list[ManagedProcess],
    *,
    response_body_mode: str = "FULL_DUPLEX_STREAMED",
    epp_log_level: str = "info",
) -> tuple[dict[str, str], int, int]:
    """The URL of every HTTP target, epp's pid and its gRPC port."""
    pods = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    sim_args = ["sim", "--time-scale", "0", "--max-num-seqs", "256"]
    for pod in pods:
        sim_args += ["--pod", f"{pod}={MODEL}"]
    sim = start_epp_module("sim", sim_args, log_dir=work)
    processes.append(sim)
    for pod in pods:
        sim.wait_http(f"http://{pod}/health")

    epp_port, epp_metrics = free_port(), free_port()
    epp_args = [
        *loopback_serve_args(epp_port, epp_metrics),
        "--log-level",
        epp_log_level,
    ]
    for pod in pods:
        epp_args += ["--endpoint", f"{pod}={MODEL}"]
    epp = start_epp_module("epp", epp_args, log_dir=work)
    processes.append(epp)
    epp.wait_http(f"http://127.0.0.1:{epp_metrics}/readyz")

    script = str(Path(__file__).parent / "noop_processor.py")
    noop_port, fixed_port = free_port(), free_port()
    for name, port, extra in (
        ("noop", noop_port, []),
        ("fixed", fixed_port, ["--destination", pods[0], "--model", MODEL]),
    ):
        baseline = ManagedProcess(name, [sys.executable, script, str(port), *extra], log_dir=work)
        processes.append(baseline)
        baseline.wait_until(functools.partial(port_open, port), timeout_s=20, what=name)

    admin = free_port()
    listen = {target: free_port() for target in TARGETS if target.startswith("envoy")}
    bootstrap = merged_bootstrap(
        admin,
        listen,
        pods[0],
        {"noop": noop_port, "fixed": fixed_port, "epp": epp_port},
        response_body_mode=response_body_mode,
    )
    processes.append(start_envoy(bootstrap, admin_port=admin, log_dir=work))
    proxy_port = free_port()
    proxy = ManagedProcess(
        "pick-proxy",
        [sys.executable, str(PROXY), "--epp", f"127.0.0.1:{epp_port}", "--port", str(proxy_port)],
        log_dir=work,
        env={"PYTHONPATH": str(PROXY.parents[1])},
    )
    processes.append(proxy)
    proxy.wait_until(functools.partial(port_open, proxy_port), timeout_s=20, what="pick proxy")
    urls = {"direct": f"http://{pods[0]}/v1/chat/completions"}
    for target, port in listen.items():
        urls[target] = f"http://127.0.0.1:{port}/v1/chat/completions"
    urls["proxy+pick"] = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
    return urls, epp.process.pid, epp_port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def pick_load(
    target: str, body: bytes, *, connections: int, seconds: float
) -> dict[str, float]:
    """``connections`` callers each sending Pick then Finish back to back for ``seconds``:
    Pick's round-trip percentiles and Pick+Finish pairs per second, as wrk() reports."""
    latencies: list[float] = []
    errors = 0

    async def caller(client: PickClient, deadline: float) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                picked = await client.pick(body)
            except PickError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            await client.finish(picked.request_id, status=200)

    async with PickClient(target) as client:
        started = time.perf_counter()
        deadline = started + max(1.0, seconds)
        await asyncio.gather(*(caller(client, deadline) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    if not latencies:
        raise RuntimeError(f"no pick succeeded ({errors} errors)")
    return {
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "rps": len(latencies) / elapsed,
        "errors": float(errors),
        "requests": float(len(latencies)),
    }


def merged_bootstrap(
    admin: int,
    listen: dict[str, int],
    pod: str,
    processors: dict[str, int],
    *,
    response_body_mode: str = "FULL_DUPLEX_STREAMED",
) -> dict[str, Any]:
    """One Envoy, one listener per path, each with its own processor cluster."""
    merged = envoy_bootstrap(
        EnvoyPorts(listen_port=listen["envoy"], admin_port=admin),
        ext_proc=False,
        static_upstream=pod,
    )
    resources = merged["static_resources"]
    for name, port in processors.items():
        other = envoy_bootstrap(
            EnvoyPorts(listen_port=listen[f"envoy+{name}"], epp_port=port),
            static_upstream=pod if name == "noop" else None,
            response_body_mode=response_body_mode,
        )
        rename(other, name)
        resources["listeners"] += other["static_resources"]["listeners"]
        known = {c["name"] for c in resources["clusters"]}
        resources["clusters"] += [
            c for c in other["static_resources"]["clusters"] if c["name"] not in known
        ]
    return merged


def rename(bootstrap: dict[str, Any], suffix: str) -> None:
    resources = bootstrap["static_resources"]
    for listener in resources["listeners"]:
        listener["name"] += f"_{suffix}"
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        for http_filter in manager["http_filters"]:
            service = http_filter["typed_config"].get("grpc_service")
            if service:
                service["envoy_grpc"]["cluster_name"] = f"processor_{suffix}"
    for cluster in resources["clusters"]:
        if cluster["name"] == "epp":
            cluster["name"] = f"processor_{suffix}"
            cluster["load_assignment"]["cluster_name"] = cluster["name"]


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, script: Path, *, connections: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.MULTILINE))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = re.search(r"(\d+) requests in", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        print(f"wrk {url}: socket errors: {socket_errors.group(1)}", file=sys.stderr)
    return {
        "p50_ms": to_ms(percentiles["50"]),
        "p99_ms": to_ms(percentiles["99"]),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "errors": float(errors.group(1)) if errors else 0.0,
        "requests": float(requests.group(1)) if requests else 0.0,
    }


def to_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS_MS[unit]


def print_table(summary: dict[str, dict[str, float]], *, body_bytes: int, connections: int) -> None:
    print(f"\nPOST /v1/chat/completions, {body_bytes}-byte body; medians over rounds\n")
    print(
        f"| path | p50 ms | p99 ms | sequential req/s | max req/s ({connections} conns) "
        "| non-2xx | epp CPU ms/req |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for target in TARGETS:
        row = summary[target]
        cpu = row.get("epp_cpu_ms_per_req")
        print(
            f"| {target} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['seq_rps']:.0f} "
            f"| {row['max_rps']:.0f} | {row['errors']:.0f} "
            f"| {'' if cpu is None else f'{cpu:.3f}'} |"
        )
    epp = summary["envoy+epp"]
    print()
    for baseline in ("envoy+noop", "envoy+fixed"):
        base = summary[baseline]
        print(
            f"epp over {baseline}: p50 {epp['p50_ms'] - base['p50_ms']:+.3f} ms, "
            f"p99 {epp['p99_ms'] - base['p99_ms']:+.3f} ms, "
            f"max req/s {100 * epp['max_rps'] / base['max_rps']:.0f} % of its"
        )
    print("targets (over envoy+noop): p50 added <= 0.300 ms, max req/s >= 80 %")
    pick = summary["pick"]
    print(
        f"Pick API (Pick round trip, no HTTP): p50 {pick['p50_ms']:.3f} ms, "
        f"p99 {pick['p99_ms']:.3f} ms, {pick['max_rps']:.0f} Pick+Finish/s; epp CPU "
        f"{pick['epp_cpu_ms_per_req']:.3f} ms/req against {epp['epp_cpu_ms_per_req']:.3f} "
        "on the ext_proc path (pick rows: the client shares the machine's cores with epp)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
