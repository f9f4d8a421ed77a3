"""The simulated pod's engine: a vLLM-V1-style scheduler stepping a virtual GPU.

One asyncio task per pod runs the step loop while there is work. Each step:

1. schedules running requests first, in admission order: a decode needs 1 token, a request
   still prefilling gets its next chunk; when a request needs a KV block and none is free,
   the most recently admitted running request is preempted (its blocks are freed and it
   goes back to the head of the waiting queue, to be recomputed later: vLLM's policy);
2. then, if nothing was preempted, admits waiting requests in FIFO order while fewer than
   ``max_num_seqs`` run, the token budget lasts and their blocks fit; a request's cached
   prefix blocks are reused and only its uncached tokens are computed;
3. takes ``SimConfig.step_time_s(...)`` simulated seconds (sleeping that times
   ``time_scale``), after which every request that completed its (re)computation emits a
   token; requests that reach ``max_tokens`` finish and free their slot.

LoRA: a request whose model is one of the pod's adapters runs that adapter. A step runs
at most ``max_loras`` distinct adapters: a waiting request whose adapter would exceed that
is skipped (it keeps its place, and requests behind it may be admitted), as in vLLM V1's
scheduler. The step's adapters are then made resident (``vllm_sim.lora``); loading one
that is not makes the whole step that much longer, as vLLM loads synchronously.

At most ``max_num_batched_tokens`` tokens are processed per step (chunked prefill). The
per-step Python cost is O(scheduled requests + blocks they allocate); nothing is O(cache).

Latency histograms are in *simulated* seconds: steps add their modelled duration, and idle
time between busy periods counts as real time divided by ``time_scale``. The sleep and the
clock are injectable, and ``step()`` runs one step synchronously, so tests need no time.

Example::

    engine = SimEngine(SimConfig(time_scale=0))
    async with engine.run("hello world", model="m", max_tokens=3) as gen:
        text = "".join([piece async for piece in gen.tokens()])   # "tok0 tok1 tok2"
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from vllm_sim.config import SimConfig
from vllm_sim.generation import Generation, RequestState
from vllm_sim.histogram import (
    E2E_LATENCY_BUCKETS_S,
    INTER_TOKEN_LATENCY_BUCKETS_S,
    TOKEN_COUNT_BUCKETS,
    TTFT_BUCKETS_S,
    Histogram,
)
from vllm_sim.kvcache import KvCache
from vllm_sim.lora import LoraSlots, LoraStats
from vllm_sim.tokens import TokenizedPrompt, model_seed, tokenize

__all__ = [
    "MAX_LAG_S",
    "EngineHistograms",
    "EngineStats",
    "Generation",
    "SimConfig",
    "SimEngine",
    "SleepFn",
    "StepPlan",
]

SleepFn = Callable[[float], Awaitable[None]]

# How far (real seconds) the step loop may fall behind its schedule, from sleep granularity
# or a busy CPU, and still catch up by skipping sleeps; beyond it the debt is dropped (and
# counted in ``EngineStats.lag_dropped_s``), so the simulated GPU runs slower than intended.
MAX_LAG_S = 0.05

_WAITING, _RUNNING = RequestState.WAITING, RequestState.RUNNING


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A consistent snapshot of the engine's gauges and counters."""

    running: int
    waiting: int
    kv_blocks_in_use: int
    kv_cached_free_blocks: int
    kv_cache_usage: float  # blocks held by running requests / kv_num_blocks, in [0, 1]
    prefix_cache_queries: int  # tokens, counted at a request's first admission
    prefix_cache_hits: int  # tokens
    preemptions: int
    request_success: int
    prompt_tokens: int
    generation_tokens: int
    steps: int
    sim_time_s: float
    lag_dropped_s: float  # real seconds the step loop fell behind and gave up on
    running_by_model: Mapping[str, int]
    waiting_by_model: Mapping[str, int]
    lora: LoraStats | None  # None when the pod serves no adapters


@dataclass(slots=True)
class EngineHistograms:
    """Latency and size distributions, in simulated seconds."""

    ttft_s: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS_S))
    inter_token_latency_s: Histogram = field(
        default_factory=lambda: Histogram(INTER_TOKEN_LATENCY_BUCKETS_S)
    )
    e2e_latency_s: Histogram = field(default_factory=lambda: Histogram(E2E_LATENCY_BUCKETS_S))
    queue_time_s: Histogram = field(default_factory=lambda: Histogram(E2E_LATENCY_BUCKETS_S))
    prompt_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_COUNT_BUCKETS))
    generation_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_COUNT_BUCKETS))


@dataclass(slots=True)
class StepPlan:
    """One scheduled step: who computes how many tokens, and what it costs."""

    start_s: float  # simulated
    duration_s: float  # simulated
    scheduled: list[tuple[Generation, int]]
    tokens: int  # scheduled tokens, prefill and decode
    decode_seqs: int
    context_tokens: int  # KV tokens the decoding sequences read
    preempted: int
    lora_load_s: float = 0.0  # part of duration_s spent loading adapters

    @property
    def end_s(self) -> float:
        """When the step's tokens are emitted (simulated)."""
        return self.start_s + self.duration_s

    @property
    def prefill_tokens(self) -> int:
        """Scheduled tokens that are not single decode tokens."""
        return self.tokens - self.decode_seqs


class SimEngine:
    """Continuous batching over a paged KV cache with prefix caching and preemption.

    Not thread-safe: everything runs on one event loop, and nothing but the step loop's
    sleep awaits, so gauges are exact at every await point.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        sleep: SleepFn | None = None,
        clock: Callable[[], float] = time.monotonic,
        lora_adapters: Collection[str] = (),
    ) -> None:
        self.config = config or SimConfig()
        self.kv = KvCache(self.config.kv_num_blocks, self.config.kv_block_size)
        # Models that are LoRA adapters of the base model, and where they reside.
        self.lora_adapters = frozenset(lora_adapters)
        self.lora = (
            LoraSlots(
                self.config.max_loras,
                self.config.cpu_loras,
                load_s=self.config.lora_load_s,
                activate_s=self.config.lora_activate_s,
            )
            if self.lora_adapters
            else None
        )
        self.histograms = EngineHistograms()
        self._sleep: SleepFn = sleep or asyncio.sleep
        self._clock = clock
        self._waiting: deque[Generation] = deque()
        self._running: list[Generation] = []
        self._running_by_model: Counter[str] = Counter()
        self._waiting_by_model: Counter[str] = Counter()
        self._seeds: dict[str, int] = {}
        self._prefix_queries = 0
        self._prefix_hits = 0
        self._preemptions = 0
        self._success = 0
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0
        self._steps = 0
        self._lag_dropped_s = 0.0
        # Simulated time at the end of the last step, and the real time it corresponds to
        # while the engine is idle.
        self._sim_time = 0.0
        self._real_anchor = clock()
        self._inflight: StepPlan | None = None
        self._inflight_real = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        """Requests admitted and not yet finished (or preempted)."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Requests queued for admission, preempted ones included."""
        return len(self._waiting)

    @property
    def stepping(self) -> bool:
        """Whether the step loop is running (it stops whenever there is no work)."""
        return self._task is not None

    def stats(self) -> EngineStats:
        """Snapshot every gauge and counter at once."""
        return EngineStats(
            running=len(self._running),
            waiting=len(self._waiting),
            kv_blocks_in_use=self.kv.blocks_in_use,
            kv_cached_free_blocks=self.kv.cached_free_blocks,
            kv_cache_usage=self.kv.usage,
            prefix_cache_queries=self._prefix_queries,
            prefix_cache_hits=self._prefix_hits,
            preemptions=self._preemptions,
            request_success=self._success,
            prompt_tokens=self._prompt_tokens_total,
            generation_tokens=self._generation_tokens_total,
            steps=self._steps,
            sim_time_s=self.sim_now(),
            lag_dropped_s=self._lag_dropped_s,
            running_by_model={m: n for m, n in self._running_by_model.items() if n},
            waiting_by_model={m: n for m, n in self._waiting_by_model.items() if n},
            lora=self.lora.stats() if self.lora is not None else None,
        )

    def sim_now(self) -> float:
        """The simulated time: interpolated within a step, real time / scale when idle."""
        scale = self.config.time_scale
        plan = self._inflight
        if plan is not None:
            if scale <= 0:
                return plan.start_s
            elapsed = (self._clock() - self._inflight_real) / scale
            return plan.start_s + min(max(elapsed, 0.0), plan.duration_s)
        if self._task is not None:
            return self._sim_time  # between two steps of a busy period
        return self._idle_sim_now()

    def tokenize(self, prompt: str | Sequence[int], model: str) -> TokenizedPrompt:
        """Count ``prompt`` and hash its blocks, seeded per model (see ``vllm_sim.tokens``)."""
        seed = self._seeds.get(model)
        if seed is None:
            seed = self._seeds[model] = model_seed(model)
        return tokenize(
            prompt, self.config.kv_block_size, seed=seed, max_blocks=self.config.kv_num_blocks
        )

    def submit(
        self, prompt: str | Sequence[int] | TokenizedPrompt, *, model: str, max_tokens: int
    ) -> Generation:
        """Queue a request now (no front-end delay, no step loop started); see ``run``."""
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        tp = prompt if isinstance(prompt, TokenizedPrompt) else self.tokenize(prompt, model)
        # The front-end delay (base latency) happened before the request reached us.
        arrival = self.sim_now() - self.config.base_latency_s
        gen = Generation(tp, model=model, max_tokens=max_tokens, arrival_s=arrival)
        self._waiting.append(gen)
        self._waiting_by_model[model] += 1
        return gen

    @contextlib.asynccontextmanager
    async def run(
        self, prompt: str | Sequence[int], *, model: str, max_tokens: int
    ) -> AsyncIterator[Generation]:
        """Submit a request after the front-end delay and yield it; leaving aborts it.

        The block may consume ``gen.tokens()`` or await ``gen.wait()``. Leaving before the
        request finished (a client disconnect) aborts it and frees its slot and blocks,
        as vLLM does; a request counts as successful once the engine finished it.
        """
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        tp = self.tokenize(prompt, model)
        await self._pause(self.config.base_latency_s)
        gen = self.submit(tp, model=model, max_tokens=max_tokens)
        self._ensure_loop()
        try:
            yield gen
        finally:
            gen._released = True
            self.abort(gen)

    def abort(self, gen: Generation) -> None:
        """Drop a waiting or running request and free its blocks; no-op once it ended."""
        if gen.state is _WAITING:
            with contextlib.suppress(ValueError):
                self._waiting.remove(gen)
            self._waiting_by_model[gen.model] -= 1
        elif gen.state is _RUNNING:
            self._running.remove(gen)
            self._release_blocks(gen)
            self._running_by_model[gen.model] -= 1
        else:
            return
        gen.state = RequestState.ABORTED
        gen._notify(True)

    def step(self) -> StepPlan | None:
        """Run one step synchronously (no sleep); None when there is nothing to do.

        For tests and tools; the step loop started by ``run`` must not be running.
        """
        if self._task is not None:
            raise RuntimeError("step() cannot run beside the engine's step loop")
        plan = self._schedule(self.sim_now())
        if plan is not None:
            self._complete(plan)
            self._real_anchor = self._clock()
        return plan

    async def close(self) -> None:
        """Stop the step loop; requests still in flight stay where they are."""
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the step loop -------------------------------------------------------------------

    def _idle_sim_now(self) -> float:
        scale = self.config.time_scale
        if scale <= 0:
            return self._sim_time
        return self._sim_time + max(0.0, self._clock() - self._real_anchor) / scale

    async def _pause(self, delay_s: float) -> None:
        scaled = delay_s * self.config.time_scale
        if scaled > 0:
            await self._sleep(scaled)

    def _ensure_loop(self) -> None:
        if self._task is None:
            # Idle time up to now becomes simulated time before the busy period starts.
            self._sim_time = self._idle_sim_now()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        scale = self.config.time_scale
        deadline = self._clock()
        try:
            while True:
                plan = self._schedule(self._sim_time)
                if plan is None:
                    return
                self._inflight = plan
                self._inflight_real = now = self._clock()
                if scale > 0:
                    # Sleep to a deadline, not for a duration: sleeps shorter than the loop's
                    # timer resolution, and CPU time spent between steps, are made up later.
                    deadline += plan.duration_s * scale
                    if now - deadline > MAX_LAG_S:
                        self._lag_dropped_s += now - deadline
                        deadline = now
                    if deadline > now:
                        await self._sleep(deadline - now)
                    else:
                        await asyncio.sleep(0)
                else:
                    await asyncio.sleep(0)  # let handlers run between back-to-back steps
                self._inflight = None
                self._complete(plan)
        finally:
            self._inflight = None
            self._task = None
            self._real_anchor = self._clock()

    # -- scheduling ----------------------------------------------------------------------

    def _schedule(self, start_s: float) -> StepPlan | None:
        cfg = self.config
        kv = self.kv
        bs = cfg.kv_block_size
        budget = cfg.max_num_batched_tokens
        running = self._running
        scheduled: list[tuple[Generation, int]] = []
        tokens = decode_seqs = context = preempted = 0
        adapters = self.lora_adapters
        step_loras: set[str] = set()

        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            remaining = req.num_tokens - req.num_computed
            n = remaining if remaining < budget else budget
            need = -(-(req.num_computed + n) // bs) - len(req.shared_blocks) - req.private_blocks
            if need > 0:
                # Alone, a request may overcommit the cache rather than deadlock.
                while need > kv.free_blocks() and len(running) > 1:
                    victim = running.pop()
                    self._preempt(victim)
                    preempted += 1
                    if victim is req:
                        break
                if req.state is not _RUNNING:
                    break
                kv.allocate(need)
                req.private_blocks += need
            scheduled.append((req, n))
            budget -= n
            tokens += n
            if remaining == 1 and req.completion_tokens:
                decode_seqs += 1
                context += req.num_tokens
            if adapters and req.model in adapters:
                step_loras.add(req.model)
            i += 1

        # Like vLLM, admit nothing in a step that had to preempt.
        waiting = self._waiting
        skipped: list[Generation] = []
        while not preempted and waiting and budget > 0 and len(running) < cfg.max_num_seqs:
            req = waiting[0]
            lora = req.model if adapters and req.model in adapters else None
            if lora is not None and lora not in step_loras and len(step_loras) >= cfg.max_loras:
                skipped.append(waiting.popleft())  # its adapter would exceed max_loras
                continue
            hashes = req.prompt.block_hashes
            # At least the last token is always computed, so it can emit the next one.
            hits, free_hits = kv.match_prefix(hashes, (req.num_tokens - 1) // bs)
            computed = hits * bs
            remaining = req.num_tokens - computed
            n = remaining if remaining < budget else budget
            need = -(-(computed + n) // bs) - hits
            if running and need + free_hits > kv.free_blocks():
                break  # FIFO: the head waits for blocks, and so does everyone behind it
            waiting.popleft()
            kv.acquire(hashes[:hits])
            kv.allocate(need)
            req.shared_blocks = list(hashes[:hits])
            req.private_blocks = need
            req.num_computed = computed
            req.state = _RUNNING
            self._waiting_by_model[req.model] -= 1
            self._running_by_model[req.model] += 1
            if not req.scheduled:
                # vLLM counts prefix-cache queries and hits once per request, not on resume.
                req.scheduled = True
                req.cached_tokens = computed
                self._prefix_queries += req.num_tokens
                self._prefix_hits += computed
                self.histograms.queue_time_s.observe(max(0.0, start_s - req.arrival_s))
            running.append(req)
            scheduled.append((req, n))
            budget -= n
            tokens += n
            if lora is not None:
                step_loras.add(lora)
        if skipped:
            waiting.extendleft(reversed(skipped))  # back in their places, ahead of the rest

        if not scheduled:
            return None
        lora_s = self.lora.prepare(step_loras) if self.lora is not None and step_loras else 0.0
        return StepPlan(
            start_s=start_s,
            duration_s=cfg.step_time_s(tokens, decode_seqs, context) + lora_s,
            scheduled=scheduled,
            tokens=tokens,
            decode_seqs=decode_seqs,
            context_tokens=context,
            preempted=preempted,
            lora_load_s=lora_s,
        )

    def _complete(self, plan: StepPlan) -> None:
        end = plan.end_s
        self._sim_time = end
        self._steps += 1
        bs = self.config.kv_block_size
        kv = self.kv
        hist = self.histograms
        regular_itl = 0
        finished = False
        for req, n in plan.scheduled:
            if req.state is not _RUNNING:
                continue  # aborted while the step ran
            req.num_computed += n
            hashes = req.prompt.block_hashes
            shared = req.shared_blocks
            full = min(req.num_computed // bs, len(hashes))
            while len(shared) < full:
                h = hashes[len(shared)]
                kv.promote(h)
                shared.append(h)
                req.private_blocks -= 1
            if req.num_computed < req.num_tokens:
                continue  # still prefilling (or recomputing)
            if req.completion_tokens >= req.max_tokens:
                self._finish(req, end)  # max_tokens 0: the prefill was the whole job
                finished = True
                continue
            if req.completion_tokens == 0:
                req.first_token_s = end
                hist.ttft_s.observe(end - req.arrival_s)
                self._prompt_tokens_total += req.prompt_tokens
            elif req.last_token_s == plan.start_s:
                regular_itl += 1  # its previous token came out of the previous step
            else:
                hist.inter_token_latency_s.observe(end - req.last_token_s)
            req.last_token_s = end
            req.completion_tokens += 1
            self._generation_tokens_total += 1
            if req.completion_tokens >= req.max_tokens:
                self._finish(req, end)
                finished = True
            else:
                req._notify(False)
        if regular_itl:
            hist.inter_token_latency_s.observe_many(plan.duration_s, regular_itl)
        if finished:
            self._running = [r for r in self._running if r.state is _RUNNING]

    def _finish(self, req: Generation, end_s: float) -> None:
        self._release_blocks(req)
        req.state = RequestState.FINISHED
        self._running_by_model[req.model] -= 1
        self._success += 1
        if req.max_tokens == 0:
            self._prompt_tokens_total += req.prompt_tokens
        hist = self.histograms
        hist.e2e_latency_s.observe(end_s - req.arrival_s)
        hist.prompt_tokens.observe(req.prompt_tokens)
        hist.generation_tokens.observe(req.completion_tokens)
        req._notify(True)

    def _preempt(self, req: Generation) -> None:
        self._release_blocks(req)
        req.num_computed = 0
        req.num_preemptions += 1
        req.state = _WAITING
        self._preemptions += 1
        self._running_by_model[req.model] -= 1
        self._waiting_by_model[req.model] += 1
        self._waiting.appendleft(req)

    def _release_blocks(self, req: Generation) -> None:
        self.kv.release(req.shared_blocks, req.private_blocks)
        req.shared_blocks = []
        req.private_blocks = 0
