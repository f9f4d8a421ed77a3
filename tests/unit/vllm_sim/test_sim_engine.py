from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from vllm_sim.engine import SimConfig, SimEngine, StepPlan
from vllm_sim.generation import Generation, RequestState

from .helpers import FakeTime, Gate, until

# Steps whose cost is easy to read: 1 s floor, 0.01 s per computed token, nothing else.
PLAIN = SimConfig(
    time_scale=0, base_latency_s=0.0, decode_s_per_token=1.0, prefill_s_per_token=0.01,
    kv_read_s_per_token=0.0, decode_s_per_seq=0.0,
)  # fmt: skip


def drain(engine: SimEngine) -> list[StepPlan]:
    """Run steps until the engine is idle."""
    plans = []
    while (plan := engine.step()) is not None:
        plans.append(plan)
        assert len(plans) < 10_000
    return plans


def text(tokens: int, fill: str = "a") -> str:
    return fill * (tokens * 4)  # the token rule: four bytes per token


async def finish(engine: SimEngine, prompt: str, max_tokens: int = 2) -> Generation:
    async with engine.run(prompt, model="m", max_tokens=max_tokens) as gen:
        await gen.wait()
    return gen


@pytest.mark.asyncio
async def test_tokens_are_deterministic_words_and_usage_is_counted() -> None:
    engine = SimEngine(SimConfig(time_scale=0))
    async with engine.run("hello", model="m", max_tokens=4) as gen:
        pieces = [p async for p in gen.tokens()]
    assert pieces == ["tok0", " tok1", " tok2", " tok3"]
    assert (gen.prompt_tokens, gen.completion_tokens, gen.finished) == (2, 4, True)
    stats = engine.stats()
    assert (stats.request_success, stats.prompt_tokens, stats.generation_tokens) == (1, 2, 4)
    assert (stats.running, stats.waiting, stats.kv_blocks_in_use) == (0, 0, 0)
    assert engine.histograms.ttft_s.count == 1
    assert engine.histograms.inter_token_latency_s.count == 3


def test_continuous_batching_shares_steps() -> None:
    engine = SimEngine(PLAIN)
    gens = [engine.submit(f"prompt {i:02d}", model="m", max_tokens=5) for i in range(8)]
    plans = drain(engine)
    # One step prefills all eight (each emits its first token), then four decode steps.
    assert len(plans) == 5
    assert [len(p.scheduled) for p in plans] == [8] * 5
    assert [p.decode_seqs for p in plans] == [0, 8, 8, 8, 8]
    assert all(g.completion_tokens == 5 and g.finished for g in gens)
    assert engine.stats().steps == 5


def test_at_most_max_num_seqs_run_and_the_rest_wait_fifo() -> None:
    engine = SimEngine(replace(PLAIN, max_num_seqs=2))
    gens = [engine.submit(f"prompt {i}", model="m", max_tokens=2) for i in range(5)]
    first = engine.step()
    assert first is not None and [g for g, _ in first.scheduled] == gens[:2]
    assert (engine.running, engine.waiting) == (2, 3)
    assert engine.stats().waiting_by_model == {"m": 3}
    plans = [first, *drain(engine)]
    admitted = [g for p in plans for g, n in p.scheduled if n > 1]  # prefill chunks
    assert admitted == gens
    assert max(len(p.scheduled) for p in plans) == 2
    assert engine.stats().request_success == 5


def test_chunked_prefill_respects_the_token_budget() -> None:
    engine = SimEngine(replace(PLAIN, max_num_batched_tokens=32))
    decoding = engine.submit(text(2), model="m", max_tokens=10)
    engine.step()  # its prefill
    long = engine.submit(text(100, "b"), model="m", max_tokens=2)
    plans = drain(engine)
    assert all(p.tokens <= 32 for p in plans)
    # The decode takes 1 token per step; the 100-token prompt gets 31, 31, 31, then 7.
    chunks = [n for p in plans for g, n in p.scheduled if g is long]
    assert chunks[:4] == [31, 31, 31, 7]
    assert long.first_token_s == plans[3].end_s
    assert decoding.completion_tokens == 10


def test_a_long_prompt_is_prefilled_over_several_steps() -> None:
    engine = SimEngine(replace(PLAIN, max_num_batched_tokens=150))
    gen = engine.submit(text(400), model="m", max_tokens=1)
    plans = drain(engine)
    assert [p.tokens for p in plans] == [150, 150, 100]
    assert gen.completion_tokens == 1
    assert gen.first_token_s == plans[-1].end_s
    # Full chunks are compute-bound (150 x 0.01 s); the last one is at the 1 s floor.
    assert [p.duration_s for p in plans] == pytest.approx([1.5, 1.5, 1.0])


def test_step_time_is_a_roofline_and_decode_grows_with_batch() -> None:
    config = SimConfig(
        time_scale=0, base_latency_s=0.0, decode_s_per_token=0.006, prefill_s_per_token=0.0001,
        kv_read_s_per_token=0.000001, decode_s_per_seq=0.0005,
    )  # fmt: skip
    # Memory-bound decode: floor + context reads, plus the per-sequence term.
    assert config.step_time_s(4, 4, 1000) == pytest.approx(0.006 + 0.001 + 0.002)
    # Compute-bound prefill: tokens x per-token compute.
    assert config.step_time_s(1000, 0, 0) == pytest.approx(0.1)

    def decode_step(batch: int) -> float:
        engine = SimEngine(config)
        for i in range(batch):
            engine.submit(f"request {i:03d}", model="m", max_tokens=3)
        engine.step()
        plan = engine.step()
        assert plan is not None and plan.decode_seqs == batch
        return plan.duration_s

    times = [decode_step(b) for b in (1, 8, 64)]
    assert times[0] == pytest.approx(0.006 + 4 * 0.000001 + 0.0005)
    assert times[0] < times[1] < times[2]


def test_repeated_prompt_reuses_cached_blocks_and_counts_hits() -> None:
    engine = SimEngine(replace(PLAIN, kv_block_size=16))
    prompt = "p" * 400  # 100 tokens, 6 full blocks
    first = engine.submit(prompt, model="m", max_tokens=1)
    assert drain(engine)[0].tokens == 100
    second = engine.submit(prompt, model="m", max_tokens=1)
    # 96 cached tokens are not recomputed; the last token always is.
    assert drain(engine)[0].tokens == 4
    assert (first.cached_tokens, second.cached_tokens) == (0, 96)
    stats = engine.stats()
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (200, 96)
    assert stats.kv_cached_free_blocks == 6


def test_a_running_request_shares_its_computed_prefix() -> None:
    engine = SimEngine(replace(PLAIN, kv_block_size=4))
    shared = text(12, "s")
    engine.submit(shared + text(4, "x"), model="m", max_tokens=5)
    engine.step()
    later = engine.submit(shared + text(4, "y"), model="m", max_tokens=2)
    engine.step()
    assert later.cached_tokens == 12
    # 4 prompt blocks and a decode block for the first, 1 own block for the second: the
    # three prefix blocks are held once.
    assert engine.kv.blocks_in_use == 6


def test_models_do_not_share_cached_blocks() -> None:
    engine = SimEngine(PLAIN)
    engine.submit("p" * 400, model="m", max_tokens=1)
    drain(engine)
    other = engine.submit("p" * 400, model="other", max_tokens=1)
    drain(engine)
    assert other.cached_tokens == 0


def test_free_cached_blocks_are_evicted_least_recently_used_first() -> None:
    engine = SimEngine(replace(PLAIN, kv_num_blocks=8, kv_block_size=4))
    prompts = [text(16, "a"), text(16, "b"), text(16, "c"), text(16, "b"), text(16, "a")]
    cached = []
    for p in prompts:
        gen = engine.submit(p, model="m", max_tokens=1)
        drain(engine)
        cached.append(gen.cached_tokens)
    # c evicts a (least recent); b survives and hits; a must be recomputed.
    assert cached == [0, 0, 0, 12, 0]
    assert engine.kv.evicted_blocks >= 4


def test_a_request_waits_while_its_blocks_do_not_fit() -> None:
    engine = SimEngine(replace(PLAIN, kv_num_blocks=8, kv_block_size=4))
    first = engine.submit(text(24, "a"), model="m", max_tokens=3)  # 6 blocks
    engine.step()
    second = engine.submit(text(24, "b"), model="m", max_tokens=3)
    plan = engine.step()
    assert plan is not None and [g for g, _ in plan.scheduled] == [first]
    assert (engine.running, engine.waiting) == (1, 1)
    assert second.state is RequestState.WAITING
    drain(engine)
    assert first.finished and second.finished
    assert engine.stats().preemptions == 0


def test_preemption_recomputes_the_latest_request_which_still_completes() -> None:
    engine = SimEngine(replace(PLAIN, kv_num_blocks=6, kv_block_size=4))
    early = engine.submit(text(8, "a"), model="m", max_tokens=12)
    late = engine.submit(text(8, "b"), model="m", max_tokens=12)
    plans = drain(engine)
    assert sum(p.preempted for p in plans) >= 1
    assert late.num_preemptions >= 1 and early.num_preemptions == 0
    assert (early.completion_tokens, late.completion_tokens) == (12, 12)
    assert early.finished and late.finished
    stats = engine.stats()
    assert stats.preemptions == late.num_preemptions
    assert stats.generation_tokens == 24
    # Queries and hits count each request once, not again when it is recomputed.
    assert stats.prefix_cache_queries == 16
    assert (stats.running, stats.waiting, stats.kv_blocks_in_use) == (0, 0, 0)
    # The recomputation is a long gap between two of its tokens.
    assert engine.histograms.inter_token_latency_s.count == 22


def test_a_prompt_larger_than_the_cache_runs_alone() -> None:
    engine = SimEngine(replace(PLAIN, kv_num_blocks=2, kv_block_size=4))
    gen = engine.submit("q" * 400, model="m", max_tokens=2)
    waiting = engine.submit("r", model="m", max_tokens=1)
    engine.step()
    assert engine.kv.usage == 1.0
    assert waiting.state is RequestState.WAITING
    drain(engine)
    assert gen.finished and waiting.finished
    assert engine.kv.blocks_in_use == 0


def test_max_tokens_zero_is_a_prefill_only_request() -> None:
    engine = SimEngine(PLAIN)
    gen = engine.submit(text(10), model="m", max_tokens=0)
    assert len(drain(engine)) == 1
    assert gen.finished and gen.completion_tokens == 0
    assert engine.stats().prompt_tokens == 10


def test_abort_frees_the_slot_and_blocks() -> None:
    engine = SimEngine(replace(PLAIN, max_num_seqs=1))
    running = engine.submit(text(40), model="m", max_tokens=5)
    waiting = engine.submit(text(40, "b"), model="m", max_tokens=5)
    engine.step()
    engine.abort(waiting)
    engine.abort(running)
    assert (engine.running, engine.waiting, engine.kv.blocks_in_use) == (0, 0, 0)
    assert running.state is waiting.state is RequestState.ABORTED
    assert engine.step() is None
    assert engine.stats().request_success == 0


@pytest.mark.asyncio
async def test_time_scale_zero_never_sleeps() -> None:
    gate = Gate()
    engine = SimEngine(SimConfig(time_scale=0, base_latency_s=1.0), sleep=gate.sleep)
    await finish(engine, "x" * 100, max_tokens=5)
    assert gate.calls == 0


@pytest.mark.asyncio
async def test_time_scale_changes_sleeps_only() -> None:
    async def workload(scale: float) -> tuple[list[float], SimEngine]:
        fake = FakeTime()
        config = SimConfig(time_scale=scale, base_latency_s=0.002)
        engine = SimEngine(config, sleep=fake.sleep, clock=fake.clock)
        await asyncio.gather(*(finish(engine, text(300 + i), max_tokens=4) for i in range(3)))
        return fake.sleeps, engine

    full, slow = await workload(1.0)
    quarter, fast = await workload(0.25)
    assert quarter == pytest.approx([d * 0.25 for d in full])
    for name in ("ttft_s", "e2e_latency_s", "inter_token_latency_s"):
        a, b = getattr(slow.histograms, name), getattr(fast.histograms, name)
        assert (a.count, a.sum) == (b.count, pytest.approx(b.sum)), name
    # Latencies are simulated seconds: base latency + prefill step + 3 decode steps.
    ttft = slow.histograms.ttft_s.sum / 3
    assert ttft == pytest.approx(0.002 + max(0.0062, 903 * 0.0000325), rel=0.01)
    assert slow.stats().steps == fast.stats().steps == 4


TIMED = replace(PLAIN, time_scale=1.0, decode_s_per_token=0.01)


@pytest.mark.asyncio
async def test_step_loop_sleeps_each_step_and_stops_when_idle() -> None:
    fake = FakeTime()
    engine = SimEngine(TIMED, sleep=fake.sleep, clock=fake.clock)
    async with engine.run("x", model="m", max_tokens=3) as gen:
        assert engine.stepping
        with pytest.raises(RuntimeError, match="beside"):
            engine.step()
        await gen.wait()
    await until(lambda: not engine.stepping, "loop stopped")
    assert fake.sleeps == pytest.approx([0.01] * 3)
    assert engine.stats().sim_time_s == pytest.approx(0.03)


@pytest.mark.asyncio
async def test_step_loop_makes_up_for_a_stall_by_skipping_sleeps() -> None:
    fake = FakeTime()

    async def stalling_sleep(delay_s: float) -> None:
        await fake.sleep(delay_s)
        if len(fake.sleeps) == 1:
            fake.now += 0.03  # the process was descheduled for 30 ms

    engine = SimEngine(TIMED, sleep=stalling_sleep, clock=fake.clock)
    async with engine.run("y", model="m", max_tokens=8) as gen:
        await gen.wait()
    assert sum(fake.sleeps) == pytest.approx(0.08 - 0.03)
    assert engine.stats().lag_dropped_s == 0.0
    # Simulated latencies are unaffected by the stall.
    assert engine.histograms.e2e_latency_s.sum == pytest.approx(0.08)


@pytest.mark.asyncio
async def test_cancelled_waiter_and_runner_release_their_place() -> None:
    gate = Gate()
    engine = SimEngine(SimConfig(max_num_seqs=1, base_latency_s=0.0), sleep=gate.sleep)
    running = asyncio.create_task(finish(engine, "a"))
    waiting = asyncio.create_task(finish(engine, "b"))
    await until(lambda: engine.waiting == 1 and engine.running == 1, "one running, one waiting")
    waiting.cancel()
    await until(lambda: engine.waiting == 0, "waiter gone")
    running.cancel()
    await until(lambda: engine.running == 0, "runner gone")
    assert engine.stats().request_success == 0
    assert engine.kv.blocks_in_use == 0
    gate.open()
    await asyncio.gather(running, waiting, return_exceptions=True)
    await finish(engine, "c")  # the engine still admits
    assert engine.stats().request_success == 1
    await engine.close()


@pytest.mark.asyncio
async def test_a_slow_consumer_gets_the_pending_tokens_in_one_batch() -> None:
    engine = SimEngine(PLAIN)
    gen = engine.submit("x", model="m", max_tokens=3)
    engine.step()
    batches = aiter(gen.token_batches())
    assert await anext(batches) == range(1)
    drain(engine)
    assert await anext(batches) == range(1, 3)
    with pytest.raises(StopAsyncIteration):
        await anext(batches)


@pytest.mark.asyncio
async def test_tokens_can_be_iterated_only_once() -> None:
    engine = SimEngine(SimConfig(time_scale=0))
    async with engine.run("x", model="m", max_tokens=1) as gen:
        async for _ in gen.tokens():
            pass
        with pytest.raises(RuntimeError, match="once"):
            async for _ in gen.tokens():
                pass


@pytest.mark.asyncio
async def test_resuming_tokens_after_release_is_refused() -> None:
    engine = SimEngine(SimConfig(time_scale=0))
    async with engine.run("x", model="m", max_tokens=3) as gen:
        it = aiter(gen.tokens())
        assert await anext(it) == "tok0"
    with pytest.raises(RuntimeError, match="released"):
        await anext(it)
    assert engine.kv.blocks_in_use == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"max_num_seqs": 0}, {"kv_block_size": 0}, {"time_scale": -1.0}, {"default_max_tokens": 0},
     {"max_num_batched_tokens": 0}, {"kv_read_s_per_token": -1.0}],
    ids=["seqs", "block", "scale", "max-tokens", "budget", "kv-read"],
)  # fmt: skip
def test_config_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SimConfig(**kwargs)  # type: ignore[arg-type]


def test_negative_max_tokens_is_refused() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        SimEngine(PLAIN).submit("x", model="m", max_tokens=-1)
