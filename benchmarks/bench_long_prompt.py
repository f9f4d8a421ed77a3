"""What one long prompt costs epp, behind the Envoy that ``epp envoy-config`` configures.

Issue 10 bounds a 400 KB body (an agentic context) at 2 ms of epp CPU end to end. Each
contender gets an Envoy of its own, from ``envoy_bootstrap`` (what ``epp envoy-config``
prints: responses ``LOGGED``, response headers skipped), in front of one simulated pod
that answers at once. One connection (``wrk -c1``) sends the same chat request back to
back; rounds alternate the contenders and the table shows medians of the rounds. Per
request: the processor's CPU (user + system of all its threads, from /proc), its
Envoy's, and the processor's context switches; then each contender's processor CPU over
grpc-floor's within each round, and their median (JSON ``floor_ratio_by_round``): the
machine's speed drifts between rounds and days more than the contenders differ.

  epp           ``epp serve``, request body ``FULL_DUPLEX_STREAMED`` (what Gateway API
                implementations configure): epp gathers the body, decides, and hands
                it back in one message (this Envoy takes up to 1 MiB)
  epp-buffered  the same with the request body ``BUFFERED``: Envoy sends the body in one
                message and waits for epp's answer, which carries no body
  grpc-floor    ``benchmarks/noop_processor.py --destination --whole-body``: a grpc.aio
                processor that answers every request as epp does, with a fixed pod, and
                echoes the body in one message (its access log stream drained): what
                the gRPC transport costs before any of epp's own work
  authz-floor   the same processor as an ext_authz server (``--ext-authz``) behind the
                same bootstrap with ext_proc swapped for ext_authz: one unary call per
                request, no echo. epp offers no such mode (ext_authz cannot change a
                body); this row is what the protocol alone costs (at the routing
                benchmark's knee a prototype epp on it saved far less: README)

``--contenders`` picks among them; ``--prompt-chars 13000`` is the routing benchmark's
size. Needs ``wrk`` (apt-get install wrk). Prints a table and writes
benchmarks/results/long_prompt.json. Two cores shared by everything: read ratios
within one run.

    python benchmarks/bench_long_prompt.py [--prompt-chars 400000] [--seconds 6] [--rounds 6]

Where epp's CPU goes (while a run is under way; ``--native`` shows grpc's C frames)::

    py-spy record -p $(pgrep -f "epp serve") -d 10 -r 250 --nonblocking -f raw -o /tmp/long.raw
    perf record -F 999 --call-graph dwarf -p $(pgrep -f "epp serve") -- sleep 4
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.overhead import cpu_seconds, port_open  # noqa: E402
from epp.envoy_config import EnvoyPorts, envoy_bootstrap  # noqa: E402
from epp.stack import (  # noqa: E402
    ManagedProcess,
    free_port,
    loopback_serve_args,
    start_envoy,
    start_epp_module,
)

RESULTS = ROOT / "benchmarks" / "results" / "long_prompt.json"
MODEL = "bench-model"
CONTENDERS = ("epp", "epp-buffered", "grpc-floor", "authz-floor")
NOOP = ROOT / "benchmarks" / "noop_processor.py"


@dataclass
class Running:
    """One contender's processor and Envoy, and where to send requests."""

    url: str
    processor_pid: int
    envoy_pid: int


def start(name: str, pod: str, work: Path, processes: list[ManagedProcess]) -> Running:
    port = free_port()
    if name in ("grpc-floor", "authz-floor"):
        argv = [sys.executable, str(NOOP), str(port), "--destination", pod, "--model", MODEL]
        flavour = ["--ext-authz"] if name == "authz-floor" else ["--whole-body"]
        processor = ManagedProcess(
            name,
            [*argv, *flavour, "--drain-access-log"],
            log_dir=work,
            env={"PYTHONPATH": str(ROOT)},
        )
        processes.append(processor)
        processor.wait_until(functools.partial(port_open, port), timeout_s=20, what=name)
    else:
        metrics_port = free_port()
        args = [*loopback_serve_args(port, metrics_port), "--log-level", "warning"]
        processor = start_epp_module(name, [*args, "--endpoint", f"{pod}={MODEL}"], log_dir=work)
        processes.append(processor)
        processor.wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
    listen, admin = free_port(), free_port()
    bootstrap = envoy_bootstrap(
        EnvoyPorts(listen_port=listen, admin_port=admin, epp_port=port),
        body_mode="BUFFERED" if name == "epp-buffered" else "FULL_DUPLEX_STREAMED",
    )
    if name == "authz-floor":
        bootstrap = ext_authz_bootstrap(bootstrap)
    envoy = start_envoy(bootstrap, admin_port=admin, log_dir=work, name=f"envoy-{name}")
    processes.append(envoy)
    return Running(
        f"http://127.0.0.1:{listen}/v1/chat/completions",
        processor.process.pid,
        envoy.process.pid,
    )


_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"


def ext_authz_bootstrap(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """``bootstrap`` (from ``envoy_bootstrap``) with its ext_proc filter replaced by ext_authz
    on the same cluster: the whole body in the check (as bytes), the route cache cleared
    after it, everything else (the access log, the Lua filter) as it was."""
    for listener in bootstrap["static_resources"]["listeners"]:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        filters = manager["http_filters"]
        largest_body = listener.get("per_connection_buffer_limit_bytes", 1 << 20)
        for index, http_filter in enumerate(filters):
            if http_filter["name"] != "envoy.filters.http.ext_proc":
                continue
            service = http_filter["typed_config"]["grpc_service"]
            filters[index] = {
                "name": "envoy.filters.http.ext_authz",
                "typed_config": {
                    "@type": _EXT_AUTHZ,
                    "grpc_service": {"envoy_grpc": service["envoy_grpc"], "timeout": "10s"},
                    "transport_api_version": "V3",
                    "clear_route_cache": True,
                    "with_request_body": {
                        "max_request_bytes": largest_body,
                        "allow_partial_message": False,
                        "pack_as_bytes": True,
                    },
                },
            }
    return bootstrap


def _context_switches(pid: int) -> int:
    """Context switches of all of ``pid``'s threads so far, voluntary or not."""
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    switches += int(line.split()[1])
        except OSError:
            pass  # a thread that ended meanwhile
    return switches


def wrk_requests(url: str, script: Path, seconds: int) -> tuple[int, int]:
    """Requests completed and non-2xx answers of one ``wrk -c1`` run."""
    out = subprocess.run(
        ["wrk", "-t1", "-c1", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    done = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if done is None:
        raise RuntimeError(f"wrk printed no request count:\n{out}")
    return int(done.group(1)), int(bad.group(1)) if bad else 0


def measure(running: Running, script: Path, seconds: float) -> dict[str, float]:
    duration = max(1, round(seconds))  # wrk takes whole seconds
    cpu_0, switches_0 = cpu_seconds(running.processor_pid), _context_switches(running.processor_pid)
    envoy_0 = cpu_seconds(running.envoy_pid)
    requests, failed = wrk_requests(running.url, script, duration)
    cpu_1, switches_1 = cpu_seconds(running.processor_pid), _context_switches(running.processor_pid)
    envoy_1 = cpu_seconds(running.envoy_pid)
    if failed:
        raise RuntimeError(f"{failed} of {requests} requests to {running.url} failed")
    per = 1000.0 / max(1, requests)
    return {
        "requests": requests,
        "rps": requests / duration,
        "processor_cpu_ms": (cpu_1 - cpu_0) * per,
        "envoy_cpu_ms": (envoy_1 - envoy_0) * per,
        "switches": (switches_1 - switches_0) / max(1, requests),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompt-chars", type=int, default=400_000)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=6, help="alternations of the contenders")
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated, of {', '.join(CONTENDERS)}",
    )
    args = parser.parse_args()
    names = [n for n in args.contenders.split(",") if n]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        parser.error(f"unknown contenders: {', '.join(unknown)}")
    body = json.dumps(
        {
            "model": MODEL,
            "max_tokens": 1,
            "messages": [{"role": "user", "content": "Summarize this. " + "x" * args.prompt_chars}],
        }
    )
    processes: list[ManagedProcess] = []
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="epp-long-") as tmp:
        work = Path(tmp)
        script = work / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
        try:
            pod = f"127.0.0.1:{free_port()}"
            sim = start_epp_module(
                "sim", ["sim", "--time-scale", "0", "--pod", f"{pod}={MODEL}"], log_dir=work
            )
            processes.append(sim)
            sim.wait_http(f"http://{pod}/health")
            running = {n: start(n, pod, work, processes) for n in names}
            for n in names:  # warm up: connections, code paths
                measure(running[n], script, 1.0)
            for round_ in range(args.rounds):
                order = names if round_ % 2 == 0 else names[::-1]
                for n in order:
                    row = measure(running[n], script, args.seconds)
                    samples[n].append(row)
                    print(
                        f"round {round_ + 1} {n:<13} {row['processor_cpu_ms']:.3f} ms CPU/req, "
                        f"Envoy {row['envoy_cpu_ms']:.3f}, "
                        f"{row['switches']:.1f} context switches/req",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            for process in reversed(processes):
                process.stop()
    summary = {
        n: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for n, rows in samples.items()
    }
    ratios = floor_ratios(samples)
    print_table(summary, ratios, body_bytes=len(body), rounds=args.rounds)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "body_bytes": len(body),
                "seconds": args.seconds,
                "rounds": args.rounds,
                "median": summary,
                "floor_ratio_by_round": ratios,
                "samples": samples,
            },
            indent=2,
        )
    )
    print(f"\nwrote {RESULTS}")
    return 0


def floor_ratios(samples: dict[str, list[dict[str, float]]]) -> dict[str, list[float]]:
    """Each contender's processor CPU over grpc-floor's in the same round. The machine's
    speed drifts between rounds by more than the contenders differ, so the ratios are
    taken within a round and only then summarised (none without a grpc-floor)."""
    floor = samples.get("grpc-floor")
    if not floor:
        return {}
    return {
        name: [
            row["processor_cpu_ms"] / base["processor_cpu_ms"]
            for row, base in zip(rows, floor, strict=False)
            if base["processor_cpu_ms"] > 0
        ]
        for name, rows in samples.items()
        if name != "grpc-floor"
    }


def print_table(
    summary: dict[str, dict[str, Any]],
    ratios: dict[str, list[float]],
    *,
    body_bytes: int,
    rounds: int,
) -> None:
    print(f"\n{body_bytes:,}-byte chat body, one connection, medians of {rounds} rounds")
    header = ("contender", "req/s", "processor ms/req", "Envoy ms/req", "ctx switches/req")
    print(f"{header[0]:<14}{header[1]:>8}{header[2]:>18}{header[3]:>14}{header[4]:>18}")
    for name, row in summary.items():
        print(
            f"{name:<14}{row['rps']:>8.0f}{row['processor_cpu_ms']:>18.3f}"
            f"{row['envoy_cpu_ms']:>14.3f}{row['switches']:>18.1f}"
        )
    for name, by_round in ratios.items():
        if by_round:
            print(
                f"{name} / grpc-floor, processor CPU within each round: median "
                f"{statistics.median(by_round):.2f}x ({', '.join(f'{r:.2f}' for r in by_round)})"
            )


if __name__ == "__main__":
    sys.exit(main())
