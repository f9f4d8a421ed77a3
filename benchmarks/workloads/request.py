"""The request a workload produces, and how its OpenAI chat body is built."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_MODEL", "Message", "Request", "chat_body"]

DEFAULT_MODEL = "bench-model"

Message = dict[str, str]


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a workload, in simulated time.

    ``arrival_s`` counts from the start of the run in simulated seconds (the runner
    multiplies by the simulator's time scale). ``group`` is the shared-prefix group (or
    the conversation, for multi-turn chat; -1 when nothing is shared on purpose),
    ``session`` the user or conversation, ``turn`` the turn within it (0 otherwise).
    ``prompt_tokens`` counts the messages' content by the 4-bytes-per-token rule;
    ``output_tokens`` is ``max_tokens``, which the simulator always generates in full.
    """

    arrival_s: float
    body: dict[str, Any]
    group: int
    session: int
    turn: int
    prompt_tokens: int
    output_tokens: int

    @property
    def prompt_text(self) -> str:
        """The messages' contents joined, as the simulator prefills (and caches) them."""
        return "".join(m["content"] for m in self.body["messages"])


def chat_body(model: str, messages: Sequence[Message], output_tokens: int) -> dict[str, Any]:
    """A streaming chat request that asks for exactly ``output_tokens`` tokens.

    ``ignore_eos`` (a vLLM extension) keeps a real server generating to ``max_tokens``;
    usage comes back in the last SSE chunk (``stream_options.include_usage``).
    """
    return {
        "model": model,
        "messages": list(messages),
        "max_tokens": output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
