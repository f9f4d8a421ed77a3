"""A vLLM stand-in for demos, integration tests and benchmarks.

Each simulated pod is a real aiohttp server speaking vLLM's OpenAI-compatible API and
exposing vLLM's Prometheus metrics, backed by a ``SimEngine`` that models admission
(``max_num_seqs``), a paged KV cache with prefix caching, and per-token latency. With
``time_scale=0`` nothing sleeps, so tests run at loopback speed.

Example::

    async with SimFleet([PodSpec(models=("m",))], SimConfig(time_scale=0)) as fleet:
        url = fleet.pods[0].url   # POST {url}/v1/chat/completions
"""

from __future__ import annotations

from epp.sim.engine import EngineStats, Generation, SimConfig, SimEngine, SleepFn
from epp.sim.fleet import PodSpec, RunningPod, SimFleet, start_pod
from epp.sim.kvcache import KvCache
from epp.sim.metrics import MetricsRenderer
from epp.sim.server import create_app
from epp.sim.tokens import TokenizedPrompt, count_tokens, tokenize

__all__ = [
    "EngineStats",
    "Generation",
    "KvCache",
    "MetricsRenderer",
    "PodSpec",
    "RunningPod",
    "SimConfig",
    "SimEngine",
    "SimFleet",
    "SleepFn",
    "TokenizedPrompt",
    "count_tokens",
    "create_app",
    "start_pod",
    "tokenize",
]
