"""One request inside a simulated pod: its scheduler state and the tokens it has produced.

The engine owns every field but the consumer side (``tokens()``, ``wait()``, ``text()``);
token ``i`` is the text piece ``"tok{i}"`` (with a leading space after the first), so a
response's content is deterministic and its length is ``max_tokens`` tokens.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator

from vllm_sim.tokens import TokenizedPrompt

__all__ = ["Generation", "RequestState"]


class RequestState(enum.Enum):
    """Where a request is in the engine."""

    WAITING = "waiting"  # queued (new, or preempted and waiting to recompute)
    RUNNING = "running"  # scheduled in every step until it finishes or is preempted
    FINISHED = "finished"  # produced max_tokens tokens (or its prefill, for max_tokens 0)
    ABORTED = "aborted"  # the client went away first


def piece(i: int) -> str:
    """The text of generated token ``i``."""
    return f" tok{i}" if i else "tok0"


class Generation:
    """A request submitted to a ``SimEngine``. Iterate ``tokens()`` or await ``wait()``."""

    __slots__ = (
        "_released",
        "_started",
        "_waiter",
        "_wake_each_token",
        "arrival_s",
        "cached_tokens",
        "completion_tokens",
        "first_token_s",
        "last_token_s",
        "max_tokens",
        "model",
        "num_computed",
        "num_preemptions",
        "private_blocks",
        "prompt",
        "prompt_tokens",
        "scheduled",
        "shared_blocks",
        "state",
    )

    def __init__(
        self, prompt: TokenizedPrompt, *, model: str, max_tokens: int, arrival_s: float
    ) -> None:
        self.prompt = prompt
        self.model = model
        self.prompt_tokens = prompt.num_tokens
        self.max_tokens = max_tokens
        # Leading prompt tokens found in the prefix cache at first admission.
        self.cached_tokens = 0
        self.completion_tokens = 0
        self.state = RequestState.WAITING
        # Simulated times (seconds on the engine's clock).
        self.arrival_s = arrival_s
        self.first_token_s: float | None = None
        self.last_token_s = 0.0
        # Scheduler state: tokens whose KV is computed, and the blocks holding them.
        self.num_computed = 0
        self.shared_blocks: list[int] = []
        self.private_blocks = 0
        self.num_preemptions = 0
        self.scheduled = False  # admitted at least once
        self._waiter: asyncio.Future[None] | None = None
        self._wake_each_token = True
        self._started = False
        # Set when SimEngine.run's block ends; a late resume must not yield more tokens.
        self._released = False

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens: what a (re)computation must cover."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def finished(self) -> bool:
        """Whether the engine produced every token."""
        return self.state is RequestState.FINISHED

    def text(self) -> str:
        """The tokens generated so far, joined."""
        return "".join(piece(i) for i in range(self.completion_tokens))

    async def tokens(self) -> AsyncIterator[str]:
        """Yield each token's text piece as the engine produces it; iterate once.

        Raises RuntimeError if the request is aborted or released before it finishes.
        """
        async for batch in self.token_batches():
            for i in batch:
                if self._released:
                    raise RuntimeError("the request was released before it finished")
                yield piece(i)

    async def token_batches(self) -> AsyncIterator[range]:
        """Yield the indices of the tokens produced since the last batch; iterate once.

        A consumer slower than the engine gets several tokens per batch and can write them
        at once. Raises RuntimeError if the request is aborted or released unfinished.
        """
        if self._started:
            raise RuntimeError("Generation.tokens() can be iterated only once")
        self._started = True
        i = 0
        while True:
            n = self.completion_tokens
            if i < n:
                if self._released:
                    raise RuntimeError("the request was released before it finished")
                yield range(i, n)
                i = n
                continue
            if self.state is RequestState.FINISHED:
                return
            if self.state is RequestState.ABORTED or self._released:
                raise RuntimeError("the request was released before it finished")
            await self._wait(each_token=True)

    async def wait(self) -> None:
        """Return once the request has finished; raise RuntimeError if it was aborted."""
        while self.state is not RequestState.FINISHED:
            if self.state is RequestState.ABORTED:
                raise RuntimeError("the request was aborted")
            await self._wait(each_token=False)

    async def _wait(self, *, each_token: bool) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter = fut
        self._wake_each_token = each_token
        try:
            await fut
        finally:
            self._waiter = None

    def _notify(self, final: bool) -> None:
        """Wake the consumer: on every token if it streams, else only at the end."""
        fut = self._waiter
        if fut is not None and (final or self._wake_each_token) and not fut.done():
            fut.set_result(None)
