"""The control: every prompt is unique from its first byte, so no cache can ever hit.

Prompts and outputs have the shared-prefix workload's lengths, so the two are comparable:
what routing gains on shared prefixes it cannot gain here, and a router that pays for
affinity with imbalance shows it here.
"""

from __future__ import annotations

import random

from benchmarks.workloads import shared_prefix
from benchmarks.workloads.arrivals import poisson_arrivals
from benchmarks.workloads.request import DEFAULT_MODEL, Request, chat_body
from benchmarks.workloads.text import pseudo_text

__all__ = ["generate"]


def generate(
    *,
    rate_per_s: float,
    duration_s: float,
    prompt_tokens: int = shared_prefix.DEFAULT.system_tokens
    + shared_prefix.DEFAULT.question_tokens,
    output_tokens: int = shared_prefix.DEFAULT.output_tokens,
    seed: int = 0,
    model: str = DEFAULT_MODEL,
) -> list[Request]:
    """Poisson arrivals of unique single-message prompts; deterministic given the args."""
    rng = random.Random(f"no-sharing:{seed}:{rate_per_s}:{duration_s}")
    times = poisson_arrivals(rate_per_s, duration_s, rng)
    return [
        Request(
            arrival_s=t,
            body=chat_body(
                model,
                [
                    {
                        "role": "user",
                        "content": pseudo_text(f"{seed}:{rate_per_s}:unique:{i}", prompt_tokens),
                    }
                ],
                output_tokens,
            ),
            group=-1,
            session=i,
            turn=0,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
        )
        for i, t in enumerate(times)
    ]
