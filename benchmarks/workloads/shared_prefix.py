"""Shared-prefix workload: groups of users who share a long system prompt.

Modelled on the reference "b2b-saas" workload of llm-d / inference-perf
(``shared_prefix`` data: 150 groups x 5 prompts per group, a 6000-token system prompt per
group, a 1200-token question per prompt, 1000 output tokens). As there, each request
picks one of the ``groups * users`` prompts at random (with replacement), so a user's
question repeats and a router that keeps a group on one pod turns 6000 of the 7200 prompt
tokens into cache hits.

``REFERENCE`` is that workload; ``DEFAULT`` is the one this project's benchmark runs, see
its comment for the scaling. ``group_weights`` (from :mod:`benchmarks.workloads.zipf`)
skews popularity across groups; uniform otherwise.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.workloads.arrivals import poisson_arrivals
from benchmarks.workloads.request import DEFAULT_MODEL, Request, chat_body
from benchmarks.workloads.text import pseudo_text

__all__ = ["DEFAULT", "REFERENCE", "SharedPrefixSpec", "generate"]


@dataclass(frozen=True, slots=True)
class SharedPrefixSpec:
    groups: int
    users_per_group: int
    system_tokens: int
    question_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        for name in ("groups", "users_per_group", "output_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.system_tokens < 0 or self.question_tokens < 0:
            raise ValueError("token lengths must be >= 0")


REFERENCE = SharedPrefixSpec(
    groups=150, users_per_group=5, system_tokens=6000, question_tokens=1200, output_tokens=1000
)
# The prompt keeps the reference's shape (6000 + 1200 tokens: prefill and cache use are
# what routing changes). Output is 10x shorter: every output token is one SSE event
# through the sim, Envoy and the client, all on 2 shared cores, and 1000 of them per
# request would make CPU, not the simulated GPUs, the bottleneck. Groups are fewer (32),
# so a run's few hundred requests revisit each group several times; the benchmark
# shrinks each pod's KV cache to match (benchmarks/routing/run.py, 96k tokens), keeping
# the reference's ratios: all groups' prefixes (32 x 6000 = 192k tokens) are twice one
# pod's cache and a quarter of an 8-pod fleet's, as 900k tokens are against 440k per
# H100 (Llama 3.1 8B) and 3.5M for eight.
DEFAULT = SharedPrefixSpec(
    groups=32, users_per_group=5, system_tokens=6000, question_tokens=1200, output_tokens=100
)


def generate(
    spec: SharedPrefixSpec,
    *,
    rate_per_s: float,
    duration_s: float,
    seed: int = 0,
    model: str = DEFAULT_MODEL,
    group_weights: Sequence[float] | None = None,
) -> list[Request]:
    """Poisson arrivals at ``rate_per_s`` for ``duration_s``, each a random (group, user).

    Deterministic given the arguments. A group's system prompt and a user's question
    depend only on ``seed`` and their indices, never on the rate.
    """
    if group_weights is not None and len(group_weights) != spec.groups:
        raise ValueError(f"need {spec.groups} group weights, got {len(group_weights)}")
    rng = random.Random(f"shared-prefix:{seed}:{rate_per_s}:{duration_s}")
    times = poisson_arrivals(rate_per_s, duration_s, rng)
    groups = rng.choices(range(spec.groups), weights=group_weights, k=len(times))
    users = [rng.randrange(spec.users_per_group) for _ in times]
    systems: dict[int, str] = {}
    requests: list[Request] = []
    for t, group, user in zip(times, groups, users, strict=True):
        if group not in systems:
            systems[group] = pseudo_text(f"{seed}:system:{group}", spec.system_tokens)
        question = pseudo_text(f"{seed}:question:{group}:{user}", spec.question_tokens)
        messages = [
            {"role": "system", "content": systems[group]},
            {"role": "user", "content": question},
        ]
        requests.append(
            Request(
                arrival_s=t,
                body=chat_body(model, messages, spec.output_tokens),
                group=group,
                session=group * spec.users_per_group + user,
                turn=0,
                prompt_tokens=spec.system_tokens + spec.question_tokens,
                output_tokens=spec.output_tokens,
            )
        )
    return requests
