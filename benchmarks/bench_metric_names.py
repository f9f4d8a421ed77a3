"""Micro-benchmark: what exporting the legacy metric names beside the current ones costs.

epp records each request once and builds the deprecated families (inference_objective_*,
inference_pool_*, inference_extension_*) from the same data when /metrics is scraped
(epp/observability/naming.py). This measures both sides, with the legacy names on (the
default until epp 1.0) and off (--legacy-metric-names=false):

  record   the metrics of one finished request (counted as routed, started, finished
           with a streamed 200 and usage), request log off: what the stream pays
  scrape   one render of epp's registry (generate_latest) and the page's size, with
           --max-model-series label sets of the per-request families filled

and, for scale, what recording one request costs if each name had its own
prometheus_client metrics and every record were made twice (the reference's way of
exporting both).

Prints a table and writes benchmarks/results/metric_names.json.

    python benchmarks/bench_metric_names.py [--series 64] [--requests 20000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prometheus_client import (  # noqa: E402
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from epp.api.usage import Usage  # noqa: E402
from epp.observability import metrics, naming, request_metrics  # noqa: E402
from epp.routing import RoutingDecision  # noqa: E402
from epp.scheduling.types import LLMRequest  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "metric_names.json"
_HISTOGRAMS = 9  # per-request histogram families (duration, TTFT, ... response size)


def one_request(model: str) -> None:
    """Record one streamed, completed request as the ext_proc stream does."""
    decision = RoutingDecision(LLMRequest("r", model, ""), [], "", 1)
    metrics.requests_for(model, model, 0, "").inc()
    request_metrics.request_started(decision)
    now = time.monotonic()
    response = decision.response
    response.status, response.streamed, response.completed = 200, True, True
    response.first_token_at, response.ended_at = now + 0.05, now + 0.5
    response.body_bytes, response.usage = 2048, Usage(300, 40, 100)
    request_metrics.record_finished(
        request_metrics.FinishedRequest("r", now, decision=decision, request_bytes=4096)
    )


def record_us(models: list[str], requests: int) -> dict[bool, float]:
    """Per-request recording time in microseconds, by legacy names on or off: the median
    of 7 runs each, the two settings taking turns so a busy machine weighs on both."""
    runs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(7):
        for legacy in (False, True):
            naming.set_legacy_names(legacy)
            started = time.perf_counter()
            for i in range(requests):
                one_request(models[i % len(models)])
            runs[legacy].append((time.perf_counter() - started) / requests * 1e6)
    return {legacy: statistics.median(times) for legacy, times in runs.items()}


def dual_prometheus_client_us(models: list[str], requests: int) -> float:
    """Per-request recording with two prometheus_client families per metric."""
    registry = CollectorRegistry()
    labels = ["model_name", "target_model_name", "fairness_id", "priority"]
    pairs = []
    for prefix in ("new", "old"):
        counter = Counter(f"{prefix}_requests", "h", labels, registry=registry)
        gauge = Gauge(f"{prefix}_running", "h", labels, registry=registry)
        histograms = [
            Histogram(f"{prefix}_h{i}_seconds", "h", labels, registry=registry)
            for i in range(_HISTOGRAMS)
        ]
        pairs.append((counter, gauge, histograms))
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for i in range(requests):
            model = models[i % len(models)]
            values = (model, model, "default-flow", "0")
            for counter, gauge, histograms in pairs:
                counter.labels(*values).inc()
                running = gauge.labels(*values)
                running.inc()
                running.dec()
                for histogram in histograms:
                    histogram.labels(*values).observe(0.25)
        runs.append((time.perf_counter() - started) / requests * 1e6)
    return statistics.median(runs)


def scrape(renders: int) -> tuple[float, int]:
    """Median render time (ms) of epp's registry and the page's bytes."""
    times, size = [], 0
    for _ in range(renders):
        started = time.perf_counter()
        page = generate_latest(metrics.REGISTRY)
        times.append((time.perf_counter() - started) * 1e3)
        size = len(page)
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=64, help="model label sets filled")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--renders", type=int, default=9)
    args = parser.parse_args()
    request_metrics.set_request_log("off")
    metrics.MODEL_LABELS.max_series = args.series
    models = [f"model-{i:03d}" for i in range(args.series)]
    for model in models:  # every label set exists before anything is timed
        one_request(model)
    recorded = record_us(models, args.requests)
    rows: list[dict[str, Any]] = []
    for legacy in (False, True):
        naming.set_legacy_names(legacy)
        render_ms, page_bytes = scrape(args.renders)
        rows.append(
            {
                "exported": "current + legacy" if legacy else "current only",
                "record_us_per_request": recorded[legacy],
                "scrape_ms": render_ms,
                "page_bytes": page_bytes,
            }
        )
    naming.set_legacy_names(True)
    dual = dual_prometheus_client_us(models, args.requests)
    print(f"{args.series} label sets filled; request log off")
    print(f"{'exported':18} {'record us/req':>14} {'scrape ms':>10} {'page KB':>8}")
    for row in rows:
        print(
            f"{row['exported']:18} {row['record_us_per_request']:14.2f} "
            f"{row['scrape_ms']:10.1f} {row['page_bytes'] / 1e3:8.0f}"
        )
    print(f"{'(prometheus_client, every record made twice)':46} {dual:6.2f} us/req")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "series": args.series,
                "requests": args.requests,
                "rows": rows,
                "dual_prometheus_client_record_us_per_request": dual,
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
