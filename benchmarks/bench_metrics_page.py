"""Micro-benchmark: what rendering /metrics costs the event loop that routes requests.

Fills epp's own registry the way traffic does (every per-request series of each
(model, target) pair observed once), then renders the page while a 1 ms timer runs on the
same uvloop loop, and reports the page's size and the loop's worst stall (how late the
timer fired at most), for:

  on the loop   generate_latest() called in the handler (what epp did before)
  in a thread   MetricsPage.render(): the build runs in a worker thread

and for the label sets clients could make: today's bound (--max-model-series 64 names
of 128 characters) and, for comparison, what the reliability run sent before label
values were bounded (five 100 KB names).

Prints a table and writes benchmarks/results/metrics_page.json.

    python benchmarks/bench_metrics_page.py [--renders 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import uvloop  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402

from epp.observability import metrics, request_metrics  # noqa: E402
from epp.observability.exposition import MetricsPage  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "metrics_page.json"


def fill(names: list[str]) -> None:
    """One observation in every per-request series of each name (model == target)."""
    for name in names:
        series = request_metrics._series(name, name)
        for histogram in (
            series.duration,
            series.ttft,
            series.tpot,
            series.ntpot,
            series.input,
            series.output,
            series.cached,
            series.request_size,
            series.response_size,
        ):
            histogram.observe(1.0)
        series.server_errors.inc()
        metrics.requests_for(name, name).inc()


async def worst_stall_s(render: Any) -> tuple[float, int]:
    """Render once while a 1 ms timer ticks; the timer's worst lateness and page bytes."""
    stalls: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            planned = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            stalls.append(time.perf_counter() - planned)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    page = await render()
    done.set()
    await ticker
    return max(stalls), len(page)


async def measure(renders: int) -> list[dict[str, Any]]:
    page = MetricsPage(metrics.REGISTRY)

    async def on_loop() -> bytes:
        return generate_latest(metrics.REGISTRY)

    rows = []
    for how, render in (("on the loop", on_loop), ("in a thread", page.render)):
        results = [await worst_stall_s(render) for _ in range(renders)]
        rows.append(
            {
                "render": how,
                "page_bytes": results[0][1],
                "worst_stall_ms_median": statistics.median(r[0] for r in results) * 1e3,
                "worst_stall_ms_max": max(r[0] for r in results) * 1e3,
            }
        )
    return rows


CASES = {
    "bound": ("64 names of 128 chars (the bound)", [f"m{i:03d}-" + "x" * 123 for i in range(64)]),
    "before": (
        "5 names of 100 KB (unbounded, before)",
        [f"r{i}-" + "x" * 100_000 for i in range(5)],
    ),
}


def run_case(key: str, renders: int) -> list[dict[str, Any]]:
    label, names = CASES[key]
    metrics.MODEL_LABELS.max_series = len(names)
    metrics.MODEL_LABELS.max_chars = max(len(name) for name in names)  # as before, if so
    fill(names)
    rows = uvloop.run(measure(renders))
    for row in rows:
        row["labels"] = label
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--renders", type=int, default=5)
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # one case, in a process of its own (the registry is global)
        print(json.dumps(run_case(args.case, args.renders)))
        return
    rows: list[dict[str, Any]] = []
    for key in CASES:
        out = subprocess.run(
            [sys.executable, __file__, "--case", key, "--renders", str(args.renders)],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.extend(json.loads(out.stdout))
    print(f"{'labels':40} {'render':12} {'page MB':>8} {'stall p50 ms':>13} {'max ms':>8}")
    for row in rows:
        print(
            f"{row['labels']:40} {row['render']:12} {row['page_bytes'] / 1e6:8.2f} "
            f"{row['worst_stall_ms_median']:13.1f} {row['worst_stall_ms_max']:8.1f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"cases": rows}, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
