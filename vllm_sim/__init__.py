"""A vLLM stand-in for demos, integration tests and benchmarks.

Each simulated pod is a real aiohttp server speaking vLLM's OpenAI-compatible API and
exposing vLLM's Prometheus metrics, backed by a ``SimEngine`` modelled on vLLM V1's
scheduler: continuous batching with chunked prefill, a paged KV cache with automatic
prefix caching and preemption, LoRA adapters in ``--max-loras`` GPU slots that load on
demand (``vllm_sim.lora``), and a step time that grows with the batch (defaults from
Llama-3.1-8B on an H100, see ``vllm_sim.config``). ``time_scale`` speeds time up; with
``time_scale=0`` nothing sleeps, so tests run at loopback speed.

Example::

    async with SimFleet([PodSpec(models=("m",))], SimConfig(time_scale=0)) as fleet:
        url = fleet.pods[0].url   # POST {url}/v1/chat/completions
"""

from __future__ import annotations

from vllm_sim.config import SimConfig
from vllm_sim.engine import EngineStats, SimEngine, SleepFn, StepPlan
from vllm_sim.fleet import PodSpec, RunningPod, SimFleet, start_pod
from vllm_sim.generation import Generation, RequestState
from vllm_sim.kvcache import KvCache
from vllm_sim.lora import LoraSlots, LoraStats
from vllm_sim.metrics import MetricsRenderer
from vllm_sim.server import create_app
from vllm_sim.tokens import TokenizedPrompt, count_tokens, token_ids, tokenize

__all__ = [
    "EngineStats",
    "Generation",
    "KvCache",
    "LoraSlots",
    "LoraStats",
    "MetricsRenderer",
    "PodSpec",
    "RequestState",
    "RunningPod",
    "SimConfig",
    "SimEngine",
    "SimFleet",
    "SleepFn",
    "StepPlan",
    "TokenizedPrompt",
    "count_tokens",
    "create_app",
    "start_pod",
    "token_ids",
    "tokenize",
]
