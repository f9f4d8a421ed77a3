"""The simulated fleet: ``epp sim`` with N pods in one process, and its counters.

Counters come from each pod's ``/metrics`` under vLLM's names, so the same code reads
whatever the simulator turns into; a snapshot before and after a run gives the run's
deltas per pod (prefix-cache queries and hits, finished requests, tokens).
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from epp.datalayer.prometheus_text import parse_samples
from epp.stack import ManagedProcess, StackError, free_port, start_epp_module

__all__ = ["COUNTERS", "Fleet", "FleetSpec", "PodCounters", "deltas", "sim_flags"]

COUNTERS = (
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:request_success_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:num_preemptions_total",
)
_CACHE_INFO = "vllm:cache_config_info"

PodCounters = dict[str, float]


@dataclass(frozen=True, slots=True)
class FleetSpec:
    pods: int = 8
    model: str = "bench-model"
    time_scale: float = 0.1
    extra_args: Sequence[str] = field(default_factory=tuple)  # more `epp sim` flags


def sim_flags() -> frozenset[str]:
    """The flags this checkout's ``epp sim`` accepts (its ``--help``), to pass only those."""
    out = subprocess.run(
        [sys.executable, "-m", "epp", "sim", "--help"], capture_output=True, text=True, check=True
    ).stdout
    return frozenset(word.rstrip(",") for word in out.split() if word.startswith("--"))


class Fleet:
    """One ``epp sim`` process serving ``spec.pods`` pods on free loopback ports."""

    def __init__(self, spec: FleetSpec, workdir: Path, *, attempts: int = 3) -> None:
        self.spec = spec
        workdir.mkdir(parents=True, exist_ok=True)
        self._process: ManagedProcess | None = None
        # A port free when picked can be taken before the sim binds it (the client's own
        # outgoing connections draw from the same range): pick new ports and try again.
        for attempt in range(1, attempts + 1):
            self.pods = [f"127.0.0.1:{free_port()}" for _ in range(spec.pods)]
            args = ["sim", "--time-scale", repr(spec.time_scale), *spec.extra_args]
            for pod in self.pods:
                args += ["--pod", f"{pod}={spec.model}"]
            process = start_epp_module("sim", args, log_dir=workdir)
            try:
                for pod in self.pods:
                    process.wait_http(f"http://{pod}/health")
            except StackError:
                process.stop()
                if attempt == attempts or "Address already in use" not in process.log_tail():
                    raise
                continue
            self._process = process
            return

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def check_alive(self) -> None:
        if self._process is not None:
            self._process.check_alive()

    def counters(self) -> dict[str, PodCounters]:
        """Every pod's counters now, summed over label sets (e.g. finish reasons)."""
        with ThreadPoolExecutor(len(self.pods)) as pool:
            pages = list(pool.map(_metrics_page, self.pods))
        snapshot: dict[str, PodCounters] = {}
        for pod, text in zip(self.pods, pages, strict=True):
            samples = parse_samples(text, COUNTERS)
            snapshot[pod] = {name: sum(s.value for s in samples.get(name, [])) for name in COUNTERS}
        return snapshot

    def cache_config(self) -> dict[str, str]:
        """Labels of ``vllm:cache_config_info`` of the first pod (block size, blocks)."""
        samples = parse_samples(_metrics_page(self.pods[0]), {_CACHE_INFO})
        found = samples.get(_CACHE_INFO)
        return dict(found[0].labels) if found else {}


def _metrics_page(pod: str) -> str:
    with urllib.request.urlopen(f"http://{pod}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def deltas(
    before: Mapping[str, PodCounters], after: Mapping[str, PodCounters]
) -> dict[str, PodCounters]:
    """``after - before`` per pod and counter."""
    return {pod: {k: after[pod][k] - before[pod].get(k, 0.0) for k in after[pod]} for pod in after}
