"""The simulated pod's state: admission, KV-cache accounting, timing and counters.

Pure apart from asyncio sleeps and futures: no sockets, no files, and the sleep and the
clock are injectable, so tests can hold requests in flight without depending on time.

Example::

    engine = SimEngine(SimConfig(time_scale=0))
    async with engine.run("hello world", model="m", max_tokens=3) as gen:
        text = "".join([piece async for piece in gen.tokens()])   # "tok0 tok1 tok2"
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from epp.sim.histogram import (
    E2E_LATENCY_BUCKETS_S,
    INTER_TOKEN_LATENCY_BUCKETS_S,
    TOKEN_COUNT_BUCKETS,
    TTFT_BUCKETS_S,
    Histogram,
)
from epp.sim.kvcache import Allocation, KvCache
from epp.sim.tokens import TokenizedPrompt, model_seed, tokenize

__all__ = ["EngineHistograms", "EngineStats", "Generation", "SimConfig", "SimEngine", "SleepFn"]

SleepFn = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Constants of one simulated pod. The defaults give a quick but visibly real demo.

    Decode time per token does not grow with the batch: load shows up as queueing
    (``max_num_seqs``, KV admission) and as prefill saved by prefix-cache hits.
    """

    # Requests that run at once (vLLM's --max-num-seqs); the rest wait in FIFO order.
    max_num_seqs: int = 8
    kv_num_blocks: int = 2048
    kv_block_size: int = 16  # tokens per block
    # Charged once per request, for the prompt tokens not found in the prefix cache.
    prefill_s_per_token: float = 0.0001
    decode_s_per_token: float = 0.020
    base_latency_s: float = 0.005
    default_max_tokens: int = 16
    # Multiplies every sleep; 0 means the engine never sleeps at all.
    time_scale: float = 1.0
    # Emit vllm:gpu_cache_usage_perc (vLLM before v0.10) instead of vllm:kv_cache_usage_perc.
    legacy_metric_names: bool = False

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "kv_num_blocks", "kv_block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("prefill_s_per_token", "decode_s_per_token", "base_latency_s", "time_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {self.default_max_tokens}")


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A consistent snapshot of the engine's gauges and counters."""

    running: int
    waiting: int
    kv_blocks_in_use: int
    kv_cached_free_blocks: int
    kv_cache_usage: float  # blocks held by running requests / kv_num_blocks, in [0, 1]
    prefix_cache_queries: int  # tokens
    prefix_cache_hits: int  # tokens
    request_success: int
    prompt_tokens: int
    generation_tokens: int
    running_by_model: Mapping[str, int]
    waiting_by_model: Mapping[str, int]


@dataclass(slots=True)
class EngineHistograms:
    """Latency and size distributions observed from real (loop clock) time."""

    ttft_s: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS_S))
    inter_token_latency_s: Histogram = field(
        default_factory=lambda: Histogram(INTER_TOKEN_LATENCY_BUCKETS_S)
    )
    e2e_latency_s: Histogram = field(default_factory=lambda: Histogram(E2E_LATENCY_BUCKETS_S))
    queue_time_s: Histogram = field(default_factory=lambda: Histogram(E2E_LATENCY_BUCKETS_S))
    prompt_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_COUNT_BUCKETS))
    generation_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_COUNT_BUCKETS))


@dataclass(slots=True)
class _Waiter:
    prompt: TokenizedPrompt
    model: str
    future: asyncio.Future[Allocation]


class Generation:
    """One admitted request. Iterate ``tokens()`` once to prefill and decode it."""

    def __init__(
        self,
        engine: SimEngine,
        prompt: TokenizedPrompt,
        alloc: Allocation,
        *,
        max_tokens: int,
        arrival_s: float,
    ) -> None:
        self._engine = engine
        self._alloc = alloc
        self._arrival_s = arrival_s
        self._started = False
        # Set when SimEngine.run gives the blocks back; a late resume must not touch them.
        self._released = False
        self.prompt_tokens = prompt.num_tokens
        self.cached_tokens = alloc.hit_blocks * engine.config.kv_block_size
        self.max_tokens = max_tokens
        self.completion_tokens = 0
        self.finished = False

    async def tokens(self) -> AsyncIterator[str]:
        """Yield ``max_tokens`` text pieces ("tok0", " tok1", ...), one per token.

        The first piece comes after base latency plus prefill of the uncached prompt
        tokens; each later one after ``decode_s_per_token``. All sleeps are scaled by
        ``time_scale``. With ``max_tokens == 0`` only the prefill happens.
        """
        if self._started:
            raise RuntimeError("Generation.tokens() can be iterated only once")
        self._started = True
        eng = self._engine
        cfg = eng.config
        uncached = self.prompt_tokens - self.cached_tokens
        await eng._pause(cfg.base_latency_s + uncached * cfg.prefill_s_per_token)
        eng._prompt_tokens_total += self.prompt_tokens
        last = eng._clock()
        if self.max_tokens:
            eng.histograms.ttft_s.observe(last - self._arrival_s)
        for i in range(self.max_tokens):
            if i:
                await eng._pause(cfg.decode_s_per_token)
                now = eng._clock()
                eng.histograms.inter_token_latency_s.observe(now - last)
                last = now
            if self._released:
                raise RuntimeError("the request was released before it finished")
            self.completion_tokens += 1
            eng._generation_tokens_total += 1
            eng.kv.grow(self._alloc, self.prompt_tokens + self.completion_tokens)
            yield f" tok{i}" if i else "tok0"
        self.finished = True


class SimEngine:
    """Admission (at most ``max_num_seqs`` running, FIFO waiting), KV cache and counters.

    A request waits while ``max_num_seqs`` run, or while its prompt's new blocks do not fit
    in the free KV blocks (vLLM's scheduler blocks the queue head the same way); with
    nothing running the head is always admitted, so an oversized prompt cannot deadlock.
    Counters only grow; gauges are exact at every await point.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        sleep: SleepFn | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or SimConfig()
        self.kv = KvCache(self.config.kv_num_blocks, self.config.kv_block_size)
        self.histograms = EngineHistograms()
        self._sleep: SleepFn = sleep or asyncio.sleep
        self._clock = clock
        self._running = 0
        self._waiters: deque[_Waiter] = deque()
        self._running_by_model: defaultdict[str, int] = defaultdict(int)
        self._waiting_by_model: defaultdict[str, int] = defaultdict(int)
        self._seeds: dict[str, int] = {}
        self._prefix_queries = 0
        self._prefix_hits = 0
        self._success = 0
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0

    @property
    def running(self) -> int:
        """Requests admitted and not yet finished."""
        return self._running

    @property
    def waiting(self) -> int:
        """Requests queued for admission."""
        return len(self._waiters)

    def stats(self) -> EngineStats:
        """Snapshot every gauge and counter at once."""
        return EngineStats(
            running=self._running,
            waiting=len(self._waiters),
            kv_blocks_in_use=self.kv.blocks_in_use,
            kv_cached_free_blocks=self.kv.cached_free_blocks,
            kv_cache_usage=self.kv.usage,
            prefix_cache_queries=self._prefix_queries,
            prefix_cache_hits=self._prefix_hits,
            request_success=self._success,
            prompt_tokens=self._prompt_tokens_total,
            generation_tokens=self._generation_tokens_total,
            running_by_model={m: n for m, n in self._running_by_model.items() if n},
            waiting_by_model={m: n for m, n in self._waiting_by_model.items() if n},
        )

    def tokenize(self, prompt: str | Sequence[int], model: str) -> TokenizedPrompt:
        """Count ``prompt`` and hash its blocks, seeded per model (see ``epp.sim.tokens``)."""
        seed = self._seeds.get(model)
        if seed is None:
            seed = self._seeds[model] = model_seed(model)
        return tokenize(
            prompt, self.config.kv_block_size, seed=seed, max_blocks=self.config.kv_num_blocks
        )

    @asynccontextmanager
    async def run(
        self, prompt: str | Sequence[int], *, model: str, max_tokens: int
    ) -> AsyncIterator[Generation]:
        """Wait for admission, then yield the running request; leaving releases its slot.

        The request counts as successful only if ``tokens()`` was iterated to the end;
        leaving early (a client disconnect) aborts it, as vLLM does.
        """
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        tp = self.tokenize(prompt, model)
        arrival = self._clock()
        alloc = await self._acquire(tp, model)
        self.histograms.queue_time_s.observe(self._clock() - arrival)
        gen = Generation(self, tp, alloc, max_tokens=max_tokens, arrival_s=arrival)
        try:
            yield gen
        finally:
            gen._released = True
            self._release(alloc, model)
            if gen.finished:
                self._success += 1
                self.histograms.e2e_latency_s.observe(self._clock() - arrival)
                self.histograms.prompt_tokens.observe(gen.prompt_tokens)
                self.histograms.generation_tokens.observe(gen.completion_tokens)

    async def _pause(self, delay_s: float) -> None:
        scaled = delay_s * self.config.time_scale
        if scaled > 0:
            await self._sleep(scaled)

    def _fits(self, prompt: TokenizedPrompt) -> bool:
        return self._running == 0 or self.kv.blocks_needed(prompt) <= self.kv.free_blocks()

    def _admit(self, prompt: TokenizedPrompt, model: str) -> Allocation:
        alloc = self.kv.allocate(prompt)
        self._running += 1
        self._running_by_model[model] += 1
        self._prefix_queries += prompt.num_tokens
        self._prefix_hits += alloc.hit_blocks * self.config.kv_block_size
        return alloc

    async def _acquire(self, prompt: TokenizedPrompt, model: str) -> Allocation:
        if not self._waiters and self._running < self.config.max_num_seqs and self._fits(prompt):
            return self._admit(prompt, model)
        waiter = _Waiter(prompt, model, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._waiting_by_model[model] += 1
        try:
            return await waiter.future
        except asyncio.CancelledError:
            fut = waiter.future
            if fut.done() and not fut.cancelled():
                # Admitted in the same loop iteration as the cancel: give the slot back.
                self._release(fut.result(), model)
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass  # already dropped by _admit_ready
                else:
                    self._waiting_by_model[model] -= 1
                    self._admit_ready()
            raise

    def _admit_ready(self) -> None:
        while self._waiters and self._running < self.config.max_num_seqs:
            head = self._waiters[0]
            if head.future.done():
                # Its task was cancelled and has not yet run its cleanup.
                self._waiters.popleft()
                self._waiting_by_model[head.model] -= 1
                continue
            if not self._fits(head.prompt):
                break
            self._waiters.popleft()
            self._waiting_by_model[head.model] -= 1
            head.future.set_result(self._admit(head.prompt, head.model))

    def _release(self, alloc: Allocation, model: str) -> None:
        self.kv.release(alloc)
        self._running -= 1
        self._running_by_model[model] -= 1
        self._admit_ready()
