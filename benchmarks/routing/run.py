"""The routing-quality benchmark: every contender, on the same simulated fleet, in one run.

    python -m benchmarks.routing.run --quick     # what `make bench-routing` runs (~11 min)
    python -m benchmarks.routing.run             # every workload, a wider rate sweep

For each workload and offered rate, each contender in turn gets a freshly started fleet
(``epp sim``, 8 pods in one process, so caches start cold) and the same open-loop
requests (:mod:`benchmarks.routing.client`). The rates are multiples of the fleet's knee,
measured first (:mod:`benchmarks.routing.calibrate`). Prints a markdown table and writes
``benchmarks/results/routing.{md,json}`` and ``routing_ttft_p90.png``,
``routing_throughput.png``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.routing import report
from benchmarks.routing.calibrate import Calibration, calibrate
from benchmarks.routing.client import run_load
from benchmarks.routing.contenders import (
    Contender,
    EppContender,
    builtin_contenders,
    load_peers,
    replica_contenders,
    wait_answers,
)
from benchmarks.routing.fleet import Fleet, FleetSpec, deltas, sim_flags
from benchmarks.routing.oracle import oracle_hit_rate
from benchmarks.routing.profile import Sampler
from benchmarks.routing.stats import cpu_busy, cpu_times, process_cpu_s, summarize
from benchmarks.workloads import WORKLOADS, WorkloadFn, rate_sweep, shared_prefix
from benchmarks.workloads.request import Request

RESULTS = Path(__file__).resolve().parents[1] / "results"
MODEL = "bench-model"
# The whole-proxy CPU issue 10 compares epp's with (a peer from peers.py).
SGLANG_CACHE_AWARE = "sglang-router cache_aware"


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    workloads: tuple[str, ...]
    multiples: tuple[float, ...]  # of the calibrated knee
    duration_s: float  # simulated seconds of arrivals per run


# Quick: at the knee (every router keeps up), twice it (past round-robin's knee) and
# three times it (near the ceiling of perfect affinity); ~11 minutes with both peers.
QUICK = Mode("quick", ("shared-prefix",), (1.0, 2.0, 3.0), 8.0)
# Full: every workload, a finer sweep, longer runs; about an hour.
FULL = Mode("full", tuple(WORKLOADS), (0.5, 1.0, 1.5, 2.0, 3.0), 12.0)

# Simulator flags for every run, passed only where this checkout's `epp sim` has them.
# KV cache per pod: 6000 blocks of 16 tokens (96k tokens). The shared-prefix workload's
# 32 groups x 6000 tokens are then twice one pod's cache and a quarter of the fleet's, the
# reference b2b-saas ratios (150 x 6000 = 900k tokens against 440k per H100 running Llama
# 3.1 8B): a router must split the groups across pods to keep them cached.
SIM_ARGS: dict[str, str] = {"--kv-num-blocks": "6000"}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    mode = QUICK if args.quick else FULL
    workloads = args.workloads.split(",") if args.workloads else list(mode.workloads)
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        print(
            f"unknown workload(s): {', '.join(unknown)}; known: {', '.join(WORKLOADS)}",
            file=sys.stderr,
        )
        return 2
    if args.rounds < 1:
        print("--rounds must be at least 1", file=sys.stderr)
        return 2
    duration = args.duration or mode.duration_s
    contenders = _contenders(args)
    if not contenders:
        print("no contender selected", file=sys.stderr)
        return 2
    if args.cpu_reference and args.cpu_reference not in [c.name for c in contenders]:
        print(f"--cpu-reference {args.cpu_reference!r} is not a contender", file=sys.stderr)
        return 2
    flags = sim_flags()
    sim_args = [x for k, v in SIM_ARGS.items() if k in flags for x in (k, v)]
    sim_args += args.sim_arg or []
    fleet = FleetSpec(
        pods=args.pods, model=MODEL, time_scale=args.time_scale, extra_args=tuple(sim_args)
    )
    work = Path(tempfile.mkdtemp(prefix="epp-routing-"))
    started = time.monotonic()

    if args.knee:
        calibration = Calibration(args.knee / args.pods, float("nan"), args.pods)
    else:
        _log(f"calibrating one pod (cold and warm, time scale {fleet.time_scale / fleet.pods})")
        calibration = calibrate(fleet, shared_prefix.DEFAULT, work / "calibration")
    knees = {
        w: calibration.knee_rps * _relative_cost(WORKLOADS["shared-prefix"], WORKLOADS[w])
        for w in workloads
    }
    sweeps = {
        w: [float(r) for r in args.rates.split(",")]
        if args.rates
        else rate_sweep(knees[w], mode.multiples)
        for w in workloads
    }
    _log(
        f"knee {calibration.knee_rps:.3g} req/s (ceiling {calibration.ceiling_rps:.3g}); "
        f"rates {sweeps}; contenders {[c.name for c in contenders]}"
    )

    result: dict[str, Any] = {
        "meta": {
            "mode": mode.name if not args.workloads and not args.rates else f"{mode.name} (custom)",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": _commit(),
            "pods": fleet.pods,
            "model": MODEL,
            "time_scale": fleet.time_scale,
            "sim_args": " ".join(sim_args) or "defaults",
            "duration_s": duration,
            "seed": args.seed,
            "knee_rps": round(calibration.knee_rps, 3),
            "ceiling_rps": round(calibration.ceiling_rps, 3),
            "cold_rps_per_pod": calibration.cold_rps_per_pod,
            "warm_rps_per_pod": calibration.warm_rps_per_pod,
            "knees_rps": {w: round(k, 3) for w, k in knees.items()},
            "rates": sweeps,
            "contenders": [c.name for c in contenders],
            "notes": _notes(args),
        },
        "runs": [],
    }
    out_dir = Path(args.out)
    for workload in workloads:
        for rate in sweeps[workload]:
            requests = WORKLOADS[workload](rate, duration, args.seed, MODEL)
            oracle = oracle_hit_rate(requests).hit_rate
            offered_tps = round(sum(r.output_tokens for r in requests) / duration, 1)
            for round_ in range(1, args.rounds + 1):
                # Every other round in reverse, so no contender always runs first or last
                # on a machine whose speed drifts.
                order = contenders if round_ % 2 else contenders[::-1]
                for contender in order:
                    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in contender.name)
                    suffix = f"-r{round_}" if args.rounds > 1 else ""
                    row = _one_run(
                        contender,
                        fleet,
                        requests,
                        rate,
                        duration,
                        work / f"{workload}-{rate:g}-{name}{suffix}",
                        args,
                    )
                    row = {
                        "workload": workload,
                        "contender": contender.name,
                        "offered_rps": rate,
                        **({"round": round_} if args.rounds > 1 else {}),
                        "offered_tps": offered_tps,
                        "oracle_hit_rate": round(oracle, 4),
                        **row,
                    }
                    result["runs"].append(row)
                    _log(_progress(row))
                    report.write_json(result, out_dir / "routing.json")
    if args.rounds > 1:
        result["cpu_by_round"] = report.cpu_by_round(result["runs"], _cpu_reference(args))
    result["meta"]["wall_s"] = round(time.monotonic() - started, 1)
    cpu = [
        r["client_cpu_ms_per_req"]
        for r in result["runs"]
        if r.get("client_cpu_ms_per_req") is not None
    ]
    result["meta"]["client_cpu_ms_per_req_median"] = sorted(cpu)[len(cpu) // 2] if cpu else None
    text = report.markdown(result)
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "routing.md").write_text(text)
    report.write_json(result, out_dir / "routing.json")
    for path in report.plot(result, out_dir):
        _log(f"wrote {path}")
    _log(
        f"wrote {out_dir / 'routing.md'} and routing.json in {result['meta']['wall_s']} s "
        f"(logs in {work})"
    )
    return 0


def _one_run(
    contender: Contender,
    spec: FleetSpec,
    requests: Sequence[Request],
    rate: float,
    duration_s: float,
    workdir: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    schedule = [(r.arrival_s * spec.time_scale, r.body) for r in requests]
    # Open loop until the last arrival, then the run's length again to drain the queues.
    last_arrival_s = max((r.arrival_s for r in requests), default=0.0)
    time_limit = (last_arrival_s + duration_s) * spec.time_scale + 5.0
    fleet: Fleet | None = None
    try:
        fleet = Fleet(spec, workdir)
        url = contender.start(fleet.pods, spec.model, workdir)
        wait_answers(url, spec.model)
        roles = contender.processes()
        before, cpu_before = fleet.counters(), cpu_times()
        samplers = (
            [Sampler(pid, workdir / f"epp-{pid}.pyspy.txt") for pid in roles.get("epp", [])]
            if args.profile
            else []
        )
        for sampler in samplers:
            sampler.start()
        router_before = {role: process_cpu_s(pids) for role, pids in roles.items()}
        load = run_load(
            url, schedule, max_concurrency=args.max_concurrency, time_limit_s=time_limit
        )
        router_after = {role: process_cpu_s(pids) for role, pids in roles.items()}
        profiles = [p for p in (s.stop() for s in samplers) if p is not None]
        busy = cpu_busy(cpu_before, cpu_times())
        fleet.check_alive()
        row = summarize(
            load, deltas(before, fleet.counters()), time_scale=spec.time_scale, offered_per_s=rate
        )
        row["machine_cpu_busy"] = None if busy is None else round(busy, 3)
        row.update(_router_cpu(router_before, router_after, len(load.results)))
        if profiles:
            row["epp_profile"] = [p.as_json() for p in profiles]
            for profile in profiles:
                _log(f"{contender.name}, py-spy profile of epp:\n{profile.text()}")
    except Exception as exc:  # one contender failing must not end the benchmark
        row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    finally:
        contender.stop()
        if fleet is not None:
            fleet.stop()
    row.pop("offered_rps", None)
    return row


def _router_cpu(
    before: dict[str, float | None], after: dict[str, float | None], requests: int
) -> dict[str, Any]:
    """CPU per request of the router's processes, in ms (= CPU seconds per 1,000 requests),
    by role and in all; empty off Linux."""
    spent: dict[str, float] = {}
    for role, start in before.items():
        end = after.get(role)
        if start is not None and end is not None:
            spent[role] = end - start
    if not spent or not requests:
        return {}
    return {
        "router_cpu_ms_per_req": round(1000 * sum(spent.values()) / requests, 3),
        "router_cpu_ms_per_req_by_process": {
            role: round(1000 * s / requests, 3) for role, s in spent.items()
        },
    }


def _relative_cost(reference: WorkloadFn, workload: WorkloadFn) -> float:
    """How many times cheaper a cold request of ``workload`` is than one of ``reference``.

    A cold request's cost is about its prompt plus output tokens (the simulated GPU is
    compute-bound on prefill); the knee is calibrated on the shared-prefix prompt shape,
    so a workload with shorter prompts (multi-turn) gets a proportionally higher sweep.
    """

    def mean_tokens(fn: WorkloadFn) -> float:
        sample = fn(1.0, 200.0, 0, MODEL)
        return sum(r.prompt_tokens + r.output_tokens for r in sample) / len(sample)

    return mean_tokens(reference) / mean_tokens(workload)


def _install_peers(contenders: list[Contender]) -> list[Contender]:
    """Install peer routers before anything is timed; drop those that cannot install."""
    kept: list[Contender] = []
    for contender in contenders:
        install = getattr(contender, "install", None)
        if callable(install):
            try:
                install()
            except Exception as exc:  # a peer that cannot install is skipped, not fatal
                _log(f"{contender.name}: install failed, skipped: {exc}")
                continue
        kept.append(contender)
    return kept


def _contenders(args: argparse.Namespace) -> list[Contender]:
    epp_args = ["--refresh-metrics-interval", args.epp_refresh] if args.epp_refresh else []
    contenders = builtin_contenders(epp_args)
    if args.epp_replicas > 1:
        contenders += replica_contenders(args.epp_replicas, epp_args)
    for spec in args.epp_config or []:
        name, _, path = spec.partition("=")
        contenders.append(EppContender(name, Path(path), epp_args))
    for spec in args.epp_checkout or []:
        name, _, path = spec.partition("=")
        contenders.append(EppContender(name, None, epp_args, checkout=Path(path).resolve()))
    if not args.no_peers:
        peers, note = load_peers()
        if note:
            _log(note)
        contenders += peers
    if args.contenders:
        wanted = args.contenders.split(",")
        contenders = [c for c in contenders if c.name in wanted]
    return _install_peers(contenders)


def _cpu_reference(args: argparse.Namespace) -> str:
    """The contender the CPU summary divides by: ``--cpu-reference``, else sglang-router's
    cache-aware policy (no ratios when it did not run)."""
    return str(args.cpu_reference or SGLANG_CACHE_AWARE)


def _notes(args: argparse.Namespace) -> list[str]:
    notes = []
    if not args.no_peers:
        _, note = load_peers()
        if note:
            notes.append(note + ".")
    return notes


def _progress(row: dict[str, Any]) -> str:
    head = f"{row['workload']} {row['offered_rps']:g}/s {row['contender']}:"
    if "error" in row:
        return f"{head} FAILED {row['error']}"
    hit = row["hit_rate"]
    return (
        f"{head} ttft p90 {row['ttft_p90_s']} s, {row['output_tps']} tok/s, "
        f"hit {hit if hit is None else round(100 * hit, 1)} %, cv {row['pod_cv']}, "
        f"errors {row['error_count']}, wall {row['wall_s']} s, "
        f"client {row['client_cpu_ms_per_req']} ms CPU/req, "
        f"router {row.get('router_cpu_ms_per_req_by_process')} ms CPU/req, "
        f"machine CPU {row['machine_cpu_busy']}"
    )


def _commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shared-prefix only, 3 rates, shorter runs (make bench-routing)",
    )
    parser.add_argument("--workloads", help=f"comma-separated, from {', '.join(WORKLOADS)}")
    parser.add_argument("--contenders", help="comma-separated names (default: all)")
    parser.add_argument("--rates", help="comma-separated simulated req/s (skips the sweep)")
    parser.add_argument(
        "--knee", type=float, help="fleet knee in simulated req/s (skips calibration)"
    )
    parser.add_argument("--duration", type=float, help="simulated seconds of arrivals per run")
    parser.add_argument("--pods", type=int, default=8)
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.5,
        help="the simulator's: wall seconds per simulated second",
    )
    parser.add_argument(
        "--sim-arg",
        action="append",
        metavar="FLAG=VALUE",
        help="extra `epp sim` argument, e.g. --sim-arg=--max-num-seqs=256",
    )
    parser.add_argument(
        "--epp-refresh",
        metavar="DURATION",
        help="epp's --refresh-metrics-interval (default: epp's, 50ms wall)",
    )
    parser.add_argument(
        "--epp-config",
        action="append",
        metavar="NAME=PATH",
        help="also run epp with this EndpointPickerConfig, as contender NAME",
    )
    parser.add_argument(
        "--epp-checkout",
        action="append",
        metavar="NAME=DIR",
        help="also run epp from another source tree (e.g. a worktree of an earlier commit), "
        "with the Envoy bootstrap its own `epp envoy-config` prints, as contender NAME",
    )
    parser.add_argument(
        "--epp-replicas",
        type=int,
        default=1,
        metavar="N",
        help="also run N epp replicas behind the one Envoy, alone (epp-Nx) and sharing "
        "state through Redis (epp-Nx-sync), and epp serve --workers N (epp-workersN-sync)",
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=512, help="client cap on requests in flight"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample every epp process with py-spy during each run and "
        "report where its CPU went (benchmarks/routing/profile.py)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every contender this many times per rate, every other round in reverse "
        "order, and summarize router CPU per request by round (median and ratios)",
    )
    parser.add_argument(
        "--cpu-reference",
        metavar="NAME",
        help="the contender the by-round CPU ratios divide by "
        f"(default: {SGLANG_CACHE_AWARE}, when it runs)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peers", action="store_true", help="skip peers.py's routers")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
