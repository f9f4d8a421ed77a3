"""Multi-turn chat: each turn resends the whole conversation plus a new user message.

Turn ``k`` of a conversation is its system prompt, then for every earlier turn the user
message and the assistant's answer, then the new user message; so turn ``k``'s prompt is
a strict prefix of turn ``k + 1``'s, and a router that keeps a conversation on one pod
hits the cache for all but the newest message and answer. The answers are pseudo-text of
the requested output length (the workload is computed before the run, so it cannot feed
back what the server actually said); what a pod can reuse is the previous turn's prompt.

Arrivals are open loop and stationary: conversations start as a Poisson process at
``rate_per_s / turns`` and each next turn follows after a think time (``min_think_s``
plus an exponential, ``think_s`` on average), whether or not the answer has come back
(the minimum keeps that rare below the knee); only the turns that arrive within
``[0, duration_s)`` are kept. Conversations start from well before 0, so the window sees
a steady state at ``rate_per_s`` requests per second: some conversations are already
under way (their first turns in the window come without the earlier ones, so they find
nothing cached), others are cut at the end.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from benchmarks.workloads.arrivals import poisson_arrivals
from benchmarks.workloads.request import DEFAULT_MODEL, Message, Request, chat_body
from benchmarks.workloads.text import pseudo_text

__all__ = ["DEFAULT", "MultiTurnSpec", "generate"]


@dataclass(frozen=True, slots=True)
class MultiTurnSpec:
    turns: int
    system_tokens: int
    user_tokens: int
    output_tokens: int
    think_s: float  # mean simulated seconds from one turn's arrival to the next one's
    # No next turn comes sooner: about the time an answer takes near the knee, so a turn
    # seldom arrives before the answer it quotes would have come back.
    min_think_s: float = 0.0

    def __post_init__(self) -> None:
        if self.turns < 1 or self.output_tokens < 1:
            raise ValueError("turns and output_tokens must be >= 1")
        if self.system_tokens < 0 or self.user_tokens < 0:
            raise ValueError("lengths must be >= 0")
        if not 0 <= self.min_think_s <= self.think_s:
            raise ValueError("need 0 <= min_think_s <= think_s")

    def gap_s(self, rng: random.Random) -> float:
        """One think time: ``min_think_s`` plus an exponential, ``think_s`` on average."""
        extra = self.think_s - self.min_think_s
        return self.min_think_s + (rng.expovariate(1.0 / extra) if extra else 0.0)


# Ends at 2000 + 5 * 600 + 4 * 100 = 5400 prompt tokens by the fifth turn: the same
# order as the shared-prefix prompts, with less sharing early in a conversation.
DEFAULT = MultiTurnSpec(
    turns=5, system_tokens=2000, user_tokens=600, output_tokens=100, think_s=3.0, min_think_s=2.0
)


def generate(
    spec: MultiTurnSpec = DEFAULT,
    *,
    rate_per_s: float,
    duration_s: float,
    seed: int = 0,
    model: str = DEFAULT_MODEL,
) -> list[Request]:
    """Every turn of every conversation, sorted by arrival; deterministic given the args."""
    rng = random.Random(f"multi-turn:{seed}:{rate_per_s}:{duration_s}")
    # Three mean think times per gap: later turns of conversations that started earlier
    # almost never reach into the window.
    lead_s = 3 * spec.think_s * (spec.turns - 1)
    starts = [
        t - lead_s for t in poisson_arrivals(rate_per_s / spec.turns, duration_s + lead_s, rng)
    ]
    requests: list[Request] = []
    for conv, start in enumerate(starts):
        messages: list[Message] = [
            {
                "role": "system",
                "content": pseudo_text(f"{seed}:mt-system:{conv}", spec.system_tokens),
            }
        ]
        prompt_tokens = spec.system_tokens
        t = start
        for turn in range(spec.turns):
            if turn:
                messages.append(
                    {
                        "role": "assistant",
                        "content": pseudo_text(
                            f"{seed}:mt-answer:{conv}:{turn - 1}", spec.output_tokens
                        ),
                    }
                )
                prompt_tokens += spec.output_tokens
                t += spec.gap_s(rng)
            messages.append(
                {
                    "role": "user",
                    "content": pseudo_text(f"{seed}:mt-user:{conv}:{turn}", spec.user_tokens),
                }
            )
            prompt_tokens += spec.user_tokens
            if not 0 <= t < duration_s:
                continue
            requests.append(
                Request(
                    arrival_s=t,
                    body=chat_body(model, messages, spec.output_tokens),
                    group=conv,
                    session=conv,
                    turn=turn,
                    prompt_tokens=prompt_tokens,
                    output_tokens=spec.output_tokens,
                )
            )
    requests.sort(key=lambda r: (r.arrival_s, r.session, r.turn))
    return requests
