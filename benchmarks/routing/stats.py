"""One run's numbers: latency percentiles, throughput, cache hit rate, load spread.

Latencies are measured in wall seconds by the client and reported in *simulated* seconds:
the simulator multiplies every delay by its time scale, so simulated = wall / time_scale.
(Work outside the simulator, such as Envoy, epp and the client, is scaled up with it, so
a millisecond of proxy time at time scale 0.1 reads as 10 simulated milliseconds.)
"""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from benchmarks.routing.client import LoadResult
from benchmarks.routing.fleet import PodCounters

__all__ = ["CpuTimes", "cpu_busy", "cpu_times", "percentile", "process_cpu_s", "summarize"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

CpuTimes = tuple[int, int]  # (busy, total) clock ticks of all CPUs since boot


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cpu_times() -> CpuTimes | None:
    """Busy and total ticks of the whole machine (``/proc/stat``); None off Linux."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_busy(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    """The share of the machine's CPU time that was busy between two ``cpu_times()``."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def process_cpu_s(pids: Iterable[int]) -> float | None:
    """User + system CPU seconds the processes ``pids`` have used so far (Linux /proc).

    None off Linux; a process that has exited counts as 0, so read before it stops.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                # The command name, in parentheses, may hold spaces: split after it.
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / _CLOCK_TICKS


def summarize(
    load: LoadResult,
    pod_deltas: Mapping[str, PodCounters],
    *,
    time_scale: float,
    offered_per_s: float,
) -> dict[str, Any]:
    """The row of the results table for one contender at one rate (simulated units)."""
    scale = 1.0 / time_scale
    ok = [r for r in load.results if r.ok]
    ttft = [r.ttft_s * scale for r in ok if r.ttft_s is not None]
    e2e = [r.e2e_s * scale for r in ok if r.e2e_s is not None]
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    elapsed = load.wall_s * scale
    errors = Counter(r.error for r in load.results if r.error is not None)
    queries = sum(c.get("vllm:prefix_cache_queries_total", 0.0) for c in pod_deltas.values())
    hits = sum(c.get("vllm:prefix_cache_hits_total", 0.0) for c in pod_deltas.values())
    per_pod = [c.get("vllm:request_success_total", 0.0) for c in pod_deltas.values()]
    mean = statistics.fmean(per_pod) if per_pod else 0.0
    sent = len(load.results)

    def p(values: Sequence[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(value, 4)

    return {
        "offered_rps": offered_per_s,
        "requests": sent,
        "ok": len(ok),
        "errors": dict(errors),
        "error_count": sent - len(ok),
        "ttft_p50_s": p(ttft, 50),
        "ttft_p90_s": p(ttft, 90),
        "ttft_p99_s": p(ttft, 99),
        "e2e_p50_s": p(e2e, 50),
        "e2e_p90_s": p(e2e, 90),
        "output_tps": round(out_tokens / elapsed, 2) if elapsed else 0.0,
        "request_rps": round(len(ok) / elapsed, 3) if elapsed else 0.0,
        "elapsed_s": round(elapsed, 2),
        "hit_rate": round(hits / queries, 4) if queries else None,
        "pod_requests": per_pod,
        "pod_cv": round(statistics.pstdev(per_pod) / mean, 3) if mean else None,
        "pod_max": max(per_pod, default=None),
        "pod_min": min(per_pod, default=None),
        "preemptions": sum(c.get("vllm:num_preemptions_total", 0.0) for c in pod_deltas.values()),
        "client_cpu_ms_per_req": round(1000 * load.client_cpu_s / sent, 3) if sent else None,
        "wall_s": round(load.wall_s, 2),
    }
