"""Where the fleet's knee is: a short measured capacity estimate of one simulated pod.

One pod, closed loop: ``requests`` requests, at most ``concurrency`` in flight, all sent
at once; capacity = requests / makespan, in simulated requests per second. Twice:

- *cold*: every prompt unique, so each is prefilled in full (no router can help);
- *warm*: every prompt shares the workload's system prompt, so only the question is
  prefilled (what perfect cache affinity would give every request).

The fleet's knee is ``pods x cold``: the offered rate beyond which a router that gets no
cache hits falls behind. ``pods x warm`` is the ceiling a perfect router could approach.
The pod runs at ``time_scale / pods`` so that its one pod sees the wall-clock request rate
the whole fleet sees at its knee: the probe loads the CPU as a run would, no more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.routing.client import run_load
from benchmarks.routing.fleet import Fleet, FleetSpec
from benchmarks.workloads.request import chat_body
from benchmarks.workloads.shared_prefix import SharedPrefixSpec
from benchmarks.workloads.text import pseudo_text

__all__ = ["Calibration", "calibrate"]


@dataclass(frozen=True, slots=True)
class Calibration:
    cold_rps_per_pod: float  # simulated requests/s with no cache hits
    warm_rps_per_pod: float  # simulated requests/s when the system prompt is cached
    pods: int

    @property
    def knee_rps(self) -> float:
        """The fleet's capacity with no cache hits: where the sweep is anchored."""
        return self.cold_rps_per_pod * self.pods

    @property
    def ceiling_rps(self) -> float:
        return self.warm_rps_per_pod * self.pods


def calibrate(
    fleet: FleetSpec,
    workload: SharedPrefixSpec,
    workdir: Path,
    *,
    requests: int = 64,
    concurrency: int = 32,
) -> Calibration:
    """Measure one pod cold and warm; see the module docstring. Takes a few seconds."""
    probe = replace(fleet, pods=1, time_scale=fleet.time_scale / fleet.pods)
    system = pseudo_text("calibration:system", workload.system_tokens)
    rates: list[float] = []
    for warm in (False, True):
        bodies = []
        for i in range(requests):
            question = pseudo_text(f"calibration:{warm}:{i}", workload.question_tokens)
            prefix = (
                system if warm else pseudo_text(f"calibration:cold:{i}", workload.system_tokens)
            )
            bodies.append(
                (
                    0.0,
                    chat_body(
                        fleet.model,
                        [
                            {"role": "system", "content": prefix},
                            {"role": "user", "content": question},
                        ],
                        workload.output_tokens,
                    ),
                )
            )
        sim = Fleet(probe, workdir)
        try:
            load = run_load(
                f"http://{sim.pods[0]}", bodies, max_concurrency=concurrency, time_limit_s=300
            )
        finally:
            sim.stop()
        failed = [r.error for r in load.results if not r.ok]
        if failed:
            raise RuntimeError(f"calibration: {len(failed)} requests failed, e.g. {failed[0]}")
        rates.append(requests / (load.wall_s / probe.time_scale))
    return Calibration(cold_rps_per_pod=rates[0], warm_rps_per_pod=rates[1], pods=fleet.pods)
