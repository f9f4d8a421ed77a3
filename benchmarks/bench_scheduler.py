"""Time ``Scheduler.schedule()`` with the default profile.

Endpoints x prompt sizes; each call is timed on its own (``perf_counter_ns``) and the
median and p99 are reported. "hit": the same prompt every call, so the prefix index
matches every block (and on_pick refreshes them); "miss": a different first block every
call, so matching stops at once while the index fills and evicts.

The scheduler runs as epp's director runs it: the prefix index's inserts are left for
the loop's next turn (``Scheduler.defer_post_pick_work``), so "median" and "p99" time
the decision, and "after µs" is the median of that deferred work, timed apart (CPU
all the same, but not between the request and its routing answer).

    python -m benchmarks.bench_scheduler [--runs 5000]        # from the repository root

Old against new, side by side in one run (the machine is noisy: each case runs in a
child process, alternating between the trees, ``--rounds`` times; medians of the rounds
and their ratio are reported)::

    git worktree add /tmp/epp-before HEAD
    python -m benchmarks.bench_scheduler --baseline /tmp/epp-before
    git worktree remove /tmp/epp-before

How the hot spots were found (py-spy from PyPI; or cProfile over the same loop)::

    py-spy record -o /tmp/p.json -f speedscope -- \
        .venv/bin/python -m benchmarks.bench_scheduler --only 1024:32000:hit --runs 20000
    .venv/bin/python -m cProfile -s tottime -m benchmarks.bench_scheduler \
        --only 256:32000:miss --runs 3000 | head -30

Pools over 256 endpoints are scored on a sample of 256 (the default profile's
``candidate-sample-filter``); ``--sample-size 0`` scores them whole, to show what the
sample saves. The last lines give each large fleet's median over the 256-endpoint one
(issue 10: 1,024 endpoints at most 2x).

``--evict-mib 4`` writes 4 MiB through memory before each timed decision (twice these
machines' 2 MiB L2), so the endpoints and the profile's state start out of the CPU's
caches, as between two requests of a loaded server, where Envoy, grpc and the other
processes run in between; back to back (the default) they stay cached.

``--gc off`` (``gc.disable()``) or ``--gc freeze`` (``gc.collect(); gc.freeze()`` after the
warm-up) tells the cyclic GC's share of the p99 apart from the machine's noise; the
"gc colls" column counts the collections (generations 0/1/2) inside the timed loop.

Prints a table and writes benchmarks/results/scheduler.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

# A child run for --baseline imports epp from the tree it is told (see main()).
_TREE = os.environ.get("EPP_BENCH_TREE")
if _TREE:
    sys.path.insert(0, _TREE)

from epp.datalayer.endpoint import Endpoint, Metrics  # noqa: E402
from epp.scheduling.scheduler import build_scheduler, default_scheduler_config  # noqa: E402
from epp.scheduling.spec import PluginSpec, SchedulerConfig  # noqa: E402
from epp.scheduling.types import LLMRequest  # noqa: E402

ENDPOINT_COUNTS = (3, 16, 256, 1024)
PROMPT_CHARS = (0, 2_000, 16_000, 32_000)
# Cases the large fleets run: a long prompt, hit and miss (issue 10's targets).
LARGE_FLEET_MIN = 256
LARGE_FLEET_PROMPT_CHARS = (32_000,)
RESULTS = Path(__file__).parent / "results" / "scheduler.json"
ROOT = Path(__file__).resolve().parent.parent


def make_endpoints(count: int, rng: random.Random) -> list[Endpoint]:
    # Scraped "in the future" so the prefer-fresh filter keeps them for the whole run.
    fresh = time.monotonic() + 86_400.0
    return [
        Endpoint(
            address=f"10.0.0.{i + 1}:8000",
            metrics=Metrics(
                waiting_requests=rng.randrange(0, 8),
                running_requests=rng.randrange(0, 32),
                kv_cache_usage=rng.random(),
                updated_at=fresh,
            ),
            inflight_requests=rng.randrange(0, 8),
        )
        for i in range(count)
    ]


def prompt_text(chars: int, rng: random.Random) -> str:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    text = " ".join(rng.choice(words) for _ in range(chars // 4 + 1))
    return text[:chars]


GC_MODES = ("on", "off", "freeze")


def profile_config(sample_size: int | None) -> SchedulerConfig:
    """The default profile, its candidate sample resized when asked (a tree from before
    the sample has none to resize)."""
    config = default_scheduler_config()
    if sample_size is None:
        return config
    plugins = [
        PluginSpec(p.type, p.name, {**p.parameters, "sampleSize": sample_size})
        if p.type == "candidate-sample-filter"
        else p
        for p in config.plugins
    ]
    return SchedulerConfig(plugins, config.profiles)


def time_case(
    endpoints: int,
    chars: int,
    mode: str,
    runs: int,
    gc_mode: str = "on",
    sample_size: int | None = None,
    evict_mib: int = 0,
) -> dict[str, float | int | str]:
    rng = random.Random(1)
    # Written whole before each timed call: memcpy of evict_mib MiB evicts the caches.
    scratch = bytearray(evict_mib << 20)
    zeros = bytes(len(scratch))
    scheduler = build_scheduler(profile_config(sample_size))
    # As epp's director runs it: the prefix index's inserts left for the loop's next
    # turn, timed apart ("after"). A tree from before that has no such split.
    defer = getattr(scheduler, "defer_post_pick_work", None)
    deferring = bool(defer()) if defer is not None else False
    flush = scheduler.flush_deferred if deferring else None
    candidates = make_endpoints(endpoints, rng)
    base = prompt_text(chars, rng)
    hit = LLMRequest("r", "model-a", base)

    def request(i: int) -> LLMRequest:
        if mode == "hit" or chars < 8:
            return hit
        # A distinct first block per request: nothing matches, every pick adds new
        # entries. Built outside the timed call (and one at a time: 20,000 32 KB prompts
        # would take 640 MB).
        return LLMRequest("r", "model-a", f"{i:08d}" + base[8:])

    schedule = scheduler.schedule
    clock = time.perf_counter_ns
    for i in range(1_000):  # warm up; fills the index in "hit" mode
        schedule(request(i), candidates)
        if flush is not None:
            flush()
    samples = [0] * runs
    after = [0] * runs
    if gc_mode == "off":
        gc.disable()
    elif gc_mode == "freeze":  # what a server can do once started: old objects never scanned
        gc.collect()
        gc.freeze()
    collections_before = [g["collections"] for g in gc.get_stats()]
    for i in range(runs):
        req = request(i + 1_000)
        if scratch:
            scratch[:] = zeros
        start = clock()
        schedule(req, candidates)
        samples[i] = clock() - start
        if flush is not None:
            start = clock()
            flush()
            after[i] = clock() - start
    collections = [
        g["collections"] - b for g, b in zip(gc.get_stats(), collections_before, strict=True)
    ]
    gc.enable()
    gc.unfreeze()
    samples.sort()
    return {
        "endpoints": endpoints,
        "prompt_chars": chars,
        "prefix": mode,
        "runs": runs,
        "gc": gc_mode,
        "sample_size": "default" if sample_size is None else sample_size,
        "evict_mib": evict_mib,
        "gc_collections": "/".join(map(str, collections)),  # generations 0/1/2
        "median_us": round(statistics.median(samples) / 1_000, 2),
        "p99_us": round(samples[int(runs * 0.99) - 1] / 1_000, 2),
        "after_median_us": round(statistics.median(after) / 1_000, 2),
    }


def cases() -> list[tuple[int, int, str]]:
    out = []
    for n in ENDPOINT_COUNTS:
        sizes = LARGE_FLEET_PROMPT_CHARS if n >= LARGE_FLEET_MIN else PROMPT_CHARS
        for chars in sizes:
            for mode in ("hit", "miss") if chars else ("hit",):
                out.append((n, chars, mode))
    return out


def run_child(
    tree: Path,
    case: tuple[int, int, str],
    runs: int,
    gc_mode: str,
    sample_size: int | None,
    evict_mib: int = 0,
) -> dict[str, float | int | str]:
    """One case timed in a fresh process that imports epp from ``tree``."""
    env = {**os.environ, "EPP_BENCH_TREE": str(tree)}
    n, chars, mode = case
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_scheduler",
            "--child",
            "--only",
            f"{n}:{chars}:{mode}",
            "--runs",
            str(runs),
            "--gc",
            gc_mode,
            *(["--sample-size", str(sample_size)] if sample_size is not None else []),
            # Only when asked: a tree from before the flag runs the default.
            *(["--evict-mib", str(evict_mib)] if evict_mib else []),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    row: dict[str, float | int | str] = json.loads(out)
    return row


def compare(
    baseline: Path,
    selected: list[tuple[int, int, str]],
    runs: int,
    rounds: int,
    gc_mode: str,
    sample_size: int | None,
    evict_mib: int = 0,
) -> list[dict[str, float | int | str]]:
    rows = []
    for case in selected:
        new_medians, new_p99s, old_medians, old_p99s = [], [], [], []
        for _ in range(rounds):  # alternate, so drift on the machine hits both alike
            old = run_child(baseline, case, runs, gc_mode, sample_size, evict_mib)
            new = run_child(ROOT, case, runs, gc_mode, sample_size, evict_mib)
            old_medians.append(float(old["median_us"]))
            old_p99s.append(float(old["p99_us"]))
            new_medians.append(float(new["median_us"]))
            new_p99s.append(float(new["p99_us"]))
        n, chars, mode = case
        row: dict[str, float | int | str] = {
            "endpoints": n,
            "prompt_chars": chars,
            "prefix": mode,
            "runs": runs,
            "rounds": rounds,
            "gc": gc_mode,
            "evict_mib": evict_mib,
            "gc_collections": new["gc_collections"],
            "baseline_gc_collections": old["gc_collections"],
            "median_us": round(statistics.median(new_medians), 2),
            "p99_us": round(statistics.median(new_p99s), 2),
            "baseline_median_us": round(statistics.median(old_medians), 2),
            "baseline_p99_us": round(statistics.median(old_p99s), 2),
            "after_median_us": new["after_median_us"],
            "baseline_after_median_us": old.get("after_median_us", 0.0),
        }
        row["median_ratio"] = round(float(row["median_us"]) / float(row["baseline_median_us"]), 2)
        rows.append(row)
        print_rows([row], header=len(rows) == 1)
    return rows


def print_rows(rows: list[dict[str, float | int | str]], *, header: bool = True) -> None:
    compared = "baseline_median_us" in rows[0]
    if header:
        line = (
            f"{'endpoints':>9} {'prompt':>7} {'prefix':>6} {'median µs':>10} {'p99 µs':>8}"
            f" {'after µs':>9}"
        )
        if compared:
            line += f" {'old median':>11} {'old p99':>8} {'new/old':>8}"
        line += f" {'gc colls':>10}"
        print(line, flush=True)
    for row in rows:
        line = (
            f"{row['endpoints']:>9} {row['prompt_chars']:>7} {row['prefix']:>6} "
            f"{row['median_us']:>10} {row['p99_us']:>8} {row.get('after_median_us', 0.0):>9}"
        )
        if compared:
            line += (
                f" {row['baseline_median_us']:>11} {row['baseline_p99_us']:>8}"
                f" {row['median_ratio']:>8}"
            )
        line += f" {row['gc_collections']:>10}"
        print(line, flush=True)


def print_fleet_ratios(rows: list[dict[str, float | int | str]]) -> None:
    """Each fleet larger than 256 against 256, same prompt and mode: the median's ratio."""
    by_case = {(r["endpoints"], r["prompt_chars"], r["prefix"]): r for r in rows}
    for (n, chars, mode), row in by_case.items():
        base = by_case.get((LARGE_FLEET_MIN, chars, mode))
        if base is None or int(n) <= LARGE_FLEET_MIN:
            continue
        ratio = float(row["median_us"]) / float(base["median_us"])
        row[f"median_over_{LARGE_FLEET_MIN}"] = round(ratio, 2)
        print(f"{n} / {LARGE_FLEET_MIN} endpoints, {chars} chars, {mode}: median x{ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5_000)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="a case ENDPOINTS:CHARS:MODE (repeatable); default: all",
    )
    parser.add_argument(
        "--baseline", type=Path, help="a checkout of the old code (git worktree) to compare against"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternations with --baseline")
    parser.add_argument(
        "--gc",
        choices=GC_MODES,
        default="on",
        help="the cyclic GC in the timed loop: on (default), off "
        "(gc.disable()), freeze (gc.collect(); gc.freeze() first)",
    )
    parser.add_argument(
        "--sample-size",
        type=int,
        help="the candidate sample of large pools (default: the profile's, 256; 0: none)",
    )
    parser.add_argument(
        "--evict-mib",
        type=int,
        default=0,
        metavar="MIB",
        help="write this much memory before each timed decision, so it starts with cold "
        "caches (4: twice the L2 here); 0 (default): decisions back to back",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Annotated: mypy cannot star-unpack the union it would infer (args.only is Any).
    selected: list[tuple[int, int, str]] = [
        (int(n), int(c), m) for n, c, m in (o.split(":") for o in args.only)
    ] or cases()
    if args.child:
        print(
            json.dumps(
                time_case(*selected[0], args.runs, args.gc, args.sample_size, args.evict_mib)
            )
        )
        return
    if args.baseline is not None:
        rows = compare(
            args.baseline.resolve(),
            selected,
            args.runs,
            args.rounds,
            args.gc,
            args.sample_size,
            args.evict_mib,
        )
    else:
        rows = [
            time_case(n, chars, mode, args.runs, args.gc, args.sample_size, args.evict_mib)
            for n, chars, mode in selected
        ]
        print_rows(rows)
    print_fleet_ratios(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "scheduler.schedule, default profile",
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "baseline": str(args.baseline) if args.baseline else None,
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
