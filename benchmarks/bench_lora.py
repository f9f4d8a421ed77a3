"""LoRA affinity: 8 adapters of skewed popularity on 4 simulated pods with 2 adapter slots.

    python -m benchmarks.bench_lora                       # the sweep below, ~10 minutes
    python -m benchmarks.bench_lora --rates 8,16 --lora-weights 1,2,4

Every pod serves one base model and the same 8 adapters (``epp sim --enable-lora
--max-loras 2 --lora-modules ...``): at most 2 adapters on a pod's GPU and in one step,
others read from disk when needed (50 ms, stalling the pod's step; see
``vllm_sim/lora.py``). Requests arrive open-loop (Poisson); each names an adapter drawn
from Zipf(1.1) over the 8 (the top one gets 40 % of the traffic, the last 4 %) and has a
prompt of its own, so no prefix cache can help and only adapter placement matters.

Contenders, each on a freshly started fleet with the same requests:

- ``envoy-rr``: Envoy round-robin over the 4 pods;
- ``epp-no-lora``: epp's default profile without the LoRA affinity scorer;
- ``epp-lora-W``: the same plus ``lora-affinity-scorer`` with weight W (one per
  ``--lora-weights``); ``epp-lora-ref-W``: the scorer as the reference has it (no
  residency prediction, ``--reference-lora-weights``); ``epp`` (``--shipped``): epp's
  default profile as shipped.

Reported per run (simulated seconds): TTFT p50/p90, output tokens/s, adapter loads per
second (``vllm_sim:lora_adapter_loads_total`` over the pods), router CPU per request
(epp and Envoy processes). The knee is the highest offered rate at which round-robin's
TTFT p90 is at most 3x its value at the lowest rate; the targets are read there: adapter
loads >= 5x fewer with the scorer than without, TTFT p90 <= 1/2 of round-robin's.
Prints a markdown table and writes ``benchmarks/results/lora.json`` and ``lora.md``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from benchmarks.routing import report
from benchmarks.routing.client import run_load
from benchmarks.routing.contenders import (
    Contender,
    EnvoyContender,
    EppContender,
    wait_answers,
)
from benchmarks.routing.fleet import Fleet, FleetSpec
from benchmarks.routing.stats import process_cpu_s, summarize
from benchmarks.workloads.arrivals import poisson_arrivals
from benchmarks.workloads.request import chat_body
from benchmarks.workloads.text import pseudo_text
from benchmarks.workloads.zipf import zipf_weights
from epp.datalayer.prometheus_text import parse_samples
from epp.scheduling.scheduler import default_scheduler_config
from epp.scheduling.scorers import lora_affinity
from epp.scheduling.spec import PluginSpec, ProfilePluginRef, SchedulerConfig

RESULTS = Path(__file__).resolve().parent / "results"
BASE = "bench-base"
ADAPTERS = tuple(f"adapter-{i}" for i in range(8))
PODS = 4
MAX_LORAS = 2
ZIPF_EXPONENT = 1.1
PROMPT_TOKENS = 512
OUTPUT_TOKENS = 64
LORA_LOADS = "vllm_sim:lora_adapter_loads_total"
# Offered rates (simulated req/s) when --rates is not given: around round-robin's knee.
DEFAULT_RATES = (8.0, 16.0, 24.0, 32.0)
# Round-robin's TTFT p90 may grow this much over its value at the lowest rate: the knee.
KNEE_FACTOR = 3.0


def workload(rate_per_s: float, duration_s: float, seed: int = 0) -> list[tuple[float, str, Any]]:
    """(arrival s, adapter, chat body) of a Poisson stream; deterministic given the args.

    Each request's prompt is its own (no shared prefix); its adapter is drawn from
    Zipf(``ZIPF_EXPONENT``) over ``ADAPTERS``.
    """
    rng = random.Random(f"lora:{seed}:{rate_per_s}:{duration_s}")
    weights = zipf_weights(len(ADAPTERS), ZIPF_EXPONENT)
    out = []
    for i, t in enumerate(poisson_arrivals(rate_per_s, duration_s, rng)):
        adapter = rng.choices(ADAPTERS, weights)[0]
        prompt = pseudo_text(f"lora:{seed}:{rate_per_s}:{i}", PROMPT_TOKENS)
        body = chat_body(adapter, [{"role": "user", "content": prompt}], OUTPUT_TOKENS)
        out.append((t, adapter, body))
    return out


def with_lora_scorer(
    config: SchedulerConfig, weight: float, *, predict_residency: bool = True
) -> SchedulerConfig:
    """``config`` with the LoRA affinity scorer (``weight``) in its profile, or without
    it when ``weight`` is 0; ``predict_residency`` false gives the reference's scorer."""
    plugins = [p for p in config.plugins if p.type != lora_affinity.TYPE]
    profiles = []
    for profile in config.profiles:
        refs = [r for r in profile.plugins if r.plugin_ref != lora_affinity.TYPE]
        if weight:
            refs.insert(-1, ProfilePluginRef(lora_affinity.TYPE, weight))  # before the picker
        profiles.append(replace(profile, plugins=refs))
    if weight:
        parameters = {} if predict_residency else {"predictResidency": False}
        plugins.insert(-1, PluginSpec(lora_affinity.TYPE, parameters=parameters))
    return SchedulerConfig(plugins=plugins, profiles=profiles)


def config_yaml(config: SchedulerConfig) -> str:
    """An EndpointPickerConfig file holding ``config``."""
    doc = {
        "apiVersion": "epp.dev/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": p.type, **({"parameters": dict(p.parameters)} if p.parameters else {})}
            for p in config.plugins
        ],
        "schedulingProfiles": [
            {
                "name": profile.name,
                "plugins": [
                    {"pluginRef": r.plugin_ref, **({"weight": r.weight} if r.weight else {})}
                    for r in profile.plugins
                ],
            }
            for profile in config.profiles
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def knee(rows: Sequence[dict[str, Any]], contender: str = "envoy-rr") -> float | None:
    """The highest offered rate at which ``contender``'s TTFT p90 stays within
    ``KNEE_FACTOR`` times its TTFT p90 at the lowest rate: where its queues start to grow."""
    runs = sorted(
        (r for r in rows if r["contender"] == contender and r.get("ttft_p90_s") is not None),
        key=lambda r: r["offered_rps"],
    )
    if not runs:
        return None
    floor = runs[0]["ttft_p90_s"]
    kept = [r["offered_rps"] for r in runs if r["ttft_p90_s"] <= KNEE_FACTOR * floor]
    return max(kept, default=None)


def lora_loads(pods: Sequence[str]) -> float:
    total = 0.0
    for pod in pods:
        with urllib.request.urlopen(f"http://{pod}/metrics", timeout=10) as response:
            samples = parse_samples(response.read().decode(), {LORA_LOADS})
        total += sum(s.value for s in samples.get(LORA_LOADS, []))
    return total


def one_run(
    contender: Contender,
    spec: FleetSpec,
    requests: Sequence[tuple[float, str, Any]],
    rate: float,
    duration_s: float,
    workdir: Path,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    schedule = [(t * spec.time_scale, body) for t, _, body in requests]
    time_limit = 2 * duration_s * spec.time_scale + 10.0
    fleet: Fleet | None = None
    try:
        fleet = Fleet(spec, workdir)
        url = contender.start(fleet.pods, ",".join((BASE, *ADAPTERS)), workdir)
        wait_answers(url, BASE)
        roles = contender.processes()
        cpu_before = {role: process_cpu_s(pids) for role, pids in roles.items()}
        loads_before = lora_loads(fleet.pods)
        load = run_load(url, schedule, max_concurrency=512, time_limit_s=time_limit)
        cpu_after = {role: process_cpu_s(pids) for role, pids in roles.items()}
        loads = lora_loads(fleet.pods) - loads_before
        fleet.check_alive()
        row = summarize(load, {}, time_scale=spec.time_scale, offered_per_s=rate)
        row["lora_loads"] = loads
        row["lora_loads_per_s"] = round(loads / row["elapsed_s"], 3) if row["elapsed_s"] else None
        spent = [
            after - before
            for role, before in cpu_before.items()
            if before is not None and (after := cpu_after.get(role)) is not None
        ]
        row["router_cpu_ms_per_req"] = (
            round(1000 * sum(spent) / len(load.results), 3) if spent and load.results else None
        )
    except Exception as exc:  # one contender failing must not end the benchmark
        row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    finally:
        contender.stop()
        if fleet is not None:
            fleet.stop()
    return row


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# LoRA affinity ({PODS} pods, {len(ADAPTERS)} adapters Zipf({ZIPF_EXPONENT}), "
        f"--max-loras {MAX_LORAS})",
        "",
        f"commit {meta['commit']}, {meta['when']}, time scale {meta['time_scale']}, "
        f"{meta['duration_s']} simulated s of arrivals per run; knee (round-robin's TTFT "
        f"p90 <= {KNEE_FACTOR:g}x its value at the lowest rate): {meta['knee_rps']} req/s",
        "",
        "| offered req/s | contender | TTFT p50 s | TTFT p90 s | output tok/s | req/s "
        "| adapter loads/s | router CPU ms/req | errors |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"| {r['offered_rps']:g} | {r['contender']} | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['offered_rps']:g} | {r['contender']} | {r['ttft_p50_s']} | {r['ttft_p90_s']} "
            f"| {r['output_tps']} | {r['request_rps']} | {r['lora_loads_per_s']} "
            f"| {r['router_cpu_ms_per_req']} | {r['error_count']} |"
        )
    for line in meta.get("targets", []):
        lines += ["", line]
    return "\n".join(lines) + "\n"


def targets(rows: Sequence[dict[str, Any]], at: float | None, with_scorer: str) -> list[str]:
    """The two targets, read at the knee ``at``."""
    if at is None:
        return ["targets: no knee found (no round-robin run)"]
    by = {r["contender"]: r for r in rows if r["offered_rps"] == at and "error" not in r}
    lora, plain, rr = by.get(with_scorer), by.get("epp-no-lora"), by.get("envoy-rr")
    out = []
    if lora and plain:
        ratio = plain["lora_loads"] / max(lora["lora_loads"], 1.0)
        out.append(
            f"at {at:g} req/s: adapter loads without the scorer / with ({with_scorer}): "
            f"{plain['lora_loads']:g} / {lora['lora_loads']:g} = {ratio:.1f}x (target >= 5x)"
        )
    if lora and rr and lora["ttft_p90_s"] is not None and rr["ttft_p90_s"]:
        share = lora["ttft_p90_s"] / rr["ttft_p90_s"]
        out.append(
            f"at {at:g} req/s: TTFT p90 {with_scorer} / round-robin: {lora['ttft_p90_s']} / "
            f"{rr['ttft_p90_s']} = {share:.2f} (target <= 0.5)"
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")] if args.rates else list(DEFAULT_RATES)
    weights = [float(w) for w in args.lora_weights.split(",") if w]
    reference_weights = [float(w) for w in args.reference_lora_weights.split(",") if w]
    work = Path(tempfile.mkdtemp(prefix="epp-lora-"))
    contenders: list[Contender] = [EnvoyContender("envoy-rr", "ROUND_ROBIN")]
    default = default_scheduler_config()
    variants = [
        ("epp-no-lora", 0.0, True),
        *((f"epp-lora-{w:g}", w, True) for w in weights),
        *((f"epp-lora-ref-{w:g}", w, False) for w in reference_weights),
    ]
    for name, weight, predict in variants:
        path = work / f"{name}.yaml"
        config = with_lora_scorer(default, weight, predict_residency=predict)
        path.write_text(config_yaml(config))
        contenders.append(EppContender(name, path))
    if args.shipped:
        contenders.append(EppContender("epp", None))
    if args.contenders:
        wanted = set(args.contenders.split(","))
        contenders = [c for c in contenders if c.name in wanted]
    lora_args = [
        "--enable-lora",
        "--max-loras",
        str(MAX_LORAS),
        "--lora-modules",
        *(f"{a}=/adapters/{a}" for a in ADAPTERS),
    ]
    spec = FleetSpec(pods=PODS, model=BASE, time_scale=args.time_scale, extra_args=tuple(lora_args))
    result: dict[str, Any] = {
        "meta": {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": report_commit(),
            "pods": PODS,
            "adapters": len(ADAPTERS),
            "max_loras": MAX_LORAS,
            "zipf_exponent": ZIPF_EXPONENT,
            "prompt_tokens": PROMPT_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
            "time_scale": args.time_scale,
            "duration_s": args.duration,
            "rates": rates,
            "contenders": [c.name for c in contenders],
        },
        "runs": [],
    }
    out_dir = Path(args.out)
    started = time.monotonic()
    for rate in rates:
        requests = workload(rate, args.duration, args.seed)
        for contender in contenders:
            row = one_run(
                contender, spec, requests, rate, args.duration, work / f"{rate:g}-{contender.name}"
            )
            row = {"contender": contender.name, **row, "offered_rps": rate}
            result["runs"].append(row)
            _log(_progress(row))
            report.write_json(result, out_dir / "lora.json")
    best = f"epp-lora-{weights[0]:g}" if weights else "epp"
    result["meta"]["knee_rps"] = knee(result["runs"])
    result["meta"]["targets"] = targets(result["runs"], result["meta"]["knee_rps"], best)
    result["meta"]["wall_s"] = round(time.monotonic() - started, 1)
    text = markdown(result)
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lora.md").write_text(text)
    report.write_json(result, out_dir / "lora.json")
    _log(f"wrote {out_dir / 'lora.md'} and lora.json (logs in {work})")
    return 0


def report_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _progress(row: dict[str, Any]) -> str:
    head = f"{row['offered_rps']:g}/s {row['contender']}:"
    if "error" in row:
        return f"{head} FAILED {row['error']}"
    return (
        f"{head} ttft p50 {row['ttft_p50_s']} p90 {row['ttft_p90_s']} s, "
        f"{row['request_rps']} req/s, loads {row['lora_loads_per_s']}/s, "
        f"router {row['router_cpu_ms_per_req']} ms CPU/req, errors {row['error_count']}"
    )


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", help="comma-separated simulated req/s")
    parser.add_argument(
        "--lora-weights",
        default="2",
        help="weights of the LoRA affinity scorer to run, comma-separated (the first is "
        "the one the targets are read for)",
    )
    parser.add_argument(
        "--reference-lora-weights",
        default="",
        help="weights of the scorer as the reference has it (predictResidency: false)",
    )
    parser.add_argument("--shipped", action="store_true", help="also run epp's default profile")
    parser.add_argument("--contenders", help="comma-separated names (default: all)")
    parser.add_argument("--duration", type=float, default=30.0, help="simulated s of arrivals")
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="wall seconds per simulated second"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
