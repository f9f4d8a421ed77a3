from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from benchmarks.routing.client import LoadResult, RequestResult
from benchmarks.routing.stats import cpu_busy, cpu_times, percentile, summarize


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0


def test_summarize_converts_wall_to_simulated_time_and_sums_pods() -> None:
    results = [
        RequestResult(0, 0.0, ttft_s=0.1, e2e_s=0.5, status=200, output_tokens=10),
        RequestResult(1, 0.1, ttft_s=0.3, e2e_s=0.7, status=200, output_tokens=10),
        RequestResult(2, 0.2, status=503, error="http 503", e2e_s=0.01),
    ]
    load = LoadResult(results=results, wall_s=2.0, client_cpu_s=0.03)
    pods = {
        "a": {
            "vllm:prefix_cache_queries_total": 100.0,
            "vllm:prefix_cache_hits_total": 50.0,
            "vllm:request_success_total": 1.0,
        },
        "b": {
            "vllm:prefix_cache_queries_total": 100.0,
            "vllm:prefix_cache_hits_total": 0.0,
            "vllm:request_success_total": 3.0,
        },
    }
    row = summarize(load, pods, time_scale=0.5, offered_per_s=2.0)
    assert row["ttft_p50_s"] == pytest.approx(0.4)  # (0.1 + 0.3) / 2 wall, / 0.5
    assert row["e2e_p90_s"] == pytest.approx(1.36)
    assert row["elapsed_s"] == 4.0
    assert row["output_tps"] == 5.0 and row["request_rps"] == 0.5
    assert row["hit_rate"] == 0.25
    assert row["pod_requests"] == [1.0, 3.0]
    assert row["pod_cv"] == 0.5 and (row["pod_max"], row["pod_min"]) == (3.0, 1.0)
    assert row["errors"] == {"http 503": 1} and row["error_count"] == 1
    assert row["client_cpu_ms_per_req"] == 10.0


def test_cpu_busy_is_a_share_of_the_machine() -> None:
    before = cpu_times()
    after = None if before is None else (before[0] + 30, before[1] + 120)
    assert cpu_busy(before, after) == (None if before is None else 0.25)
    assert cpu_busy(None, after) is None


def test_process_cpu_counts_a_child_and_its_descendants() -> None:
    from benchmarks.routing.contenders import descendants
    from benchmarks.routing.stats import process_cpu_s

    # A parent that starts a child which burns a fixed number of instructions.
    burn = "sum(i * i for i in range(3_000_000)); import time; time.sleep(30)"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])",
        ]
    )
    try:
        deadline = 200
        while not (kids := descendants(parent.pid)) and deadline:
            deadline -= 1
            time.sleep(0.05)
        assert kids, "the child never appeared"
        spent = 0.0
        while spent < 0.05 and deadline:
            deadline -= 1
            time.sleep(0.05)
            spent = process_cpu_s(kids) or 0.0
        assert spent >= 0.05  # ticks of the burn loop, read from /proc
        assert (process_cpu_s([parent.pid, *kids]) or 0.0) >= spent
        assert process_cpu_s([2**22 + 1]) == 0.0  # no such process: counts nothing
    finally:
        parent.kill()
        for pid in descendants(parent.pid):
            os.kill(pid, 9)
        parent.wait()
