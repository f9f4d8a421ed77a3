"""Time ``Scheduler.schedule()`` with the default profile.

Endpoints x prompt sizes; each call is timed on its own (``perf_counter_ns``) and the
median and p99 are reported. "hit": the same prompt every call, so the prefix index
matches every block (and on_pick refreshes them); "miss": a different first block every
call, so matching stops at once while the index fills and evicts.

    python -m benchmarks.bench_scheduler [--runs 20000]     # from the repository root

Prints a table and writes benchmarks/results/scheduler.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.scheduling.scheduler import build_scheduler, default_scheduler_config
from epp.scheduling.types import LLMRequest

ENDPOINT_COUNTS = (3, 16)
PROMPT_CHARS = (0, 2_000, 16_000)
RESULTS = Path(__file__).parent / "results" / "scheduler.json"


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


def time_case(endpoints: int, chars: int, mode: str, runs: int) -> dict[str, float | int | str]:
    rng = random.Random(1)
    scheduler = build_scheduler(default_scheduler_config())
    candidates = make_endpoints(endpoints, rng)
    base = prompt_text(chars, rng)
    if mode == "hit":
        requests = [LLMRequest("r", "model-a", base)] * 64
    else:
        # A distinct first block per request: nothing matches, every pick adds new entries.
        requests = [
            LLMRequest("r", "model-a", f"{i:08d}" + base[8:] if chars >= 8 else base)
            for i in range(runs + 1_000)
        ]
    schedule = scheduler.schedule
    clock = time.perf_counter_ns
    for i in range(1_000):  # warm up; fills the index in "hit" mode
        schedule(requests[i % len(requests)], candidates)
    samples = [0] * runs
    for i in range(runs):
        request = requests[(i + 1_000) % len(requests)]
        start = clock()
        schedule(request, candidates)
        samples[i] = clock() - start
    samples.sort()
    return {
        "endpoints": endpoints,
        "prompt_chars": chars,
        "prefix": mode,
        "runs": runs,
        "median_us": round(statistics.median(samples) / 1_000, 2),
        "p99_us": round(samples[int(runs * 0.99) - 1] / 1_000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20_000)
    args = parser.parse_args()
    rows = [
        time_case(n, chars, mode, args.runs)
        for n in ENDPOINT_COUNTS
        for chars in PROMPT_CHARS
        for mode in (("hit", "miss") if chars else ("hit",))
    ]
    print(f"{'endpoints':>9} {'prompt':>7} {'prefix':>6} {'median µs':>10} {'p99 µs':>8}")
    for row in rows:
        print(
            f"{row['endpoints']:>9} {row['prompt_chars']:>7} {row['prefix']:>6} "
            f"{row['median_us']:>10} {row['p99_us']:>8}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "scheduler.schedule, default profile",
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
