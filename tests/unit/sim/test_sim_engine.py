from __future__ import annotations

import asyncio

import pytest

from epp.sim.engine import Generation, SimConfig, SimEngine

from .helpers import Gate, until


async def finish(engine: SimEngine, prompt: str, max_tokens: int = 2) -> Generation:
    async with engine.run(prompt, model="m", max_tokens=max_tokens) as gen:
        async for _ in gen.tokens():
            pass
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


@pytest.mark.asyncio
async def test_time_scale_zero_never_sleeps() -> None:
    gate = Gate()
    engine = SimEngine(SimConfig(time_scale=0, base_latency_s=1.0), sleep=gate.sleep)
    await finish(engine, "x" * 100, max_tokens=5)
    assert gate.calls == 0


@pytest.mark.asyncio
async def test_sleeps_charge_only_uncached_prefill_and_scale() -> None:
    delays: list[float] = []

    async def record(delay_s: float) -> None:
        delays.append(delay_s)

    config = SimConfig(
        kv_block_size=4, prefill_s_per_token=1.0, decode_s_per_token=0.5,
        base_latency_s=2.0, time_scale=0.5,
    )  # fmt: skip
    engine = SimEngine(config, sleep=record)
    await finish(engine, "a" * 64, max_tokens=3)  # 16 tokens, none cached
    await finish(engine, "a" * 64, max_tokens=1)  # 12 of 16 cached
    assert delays == [9.0, 0.25, 0.25, 3.0]


@pytest.mark.asyncio
async def test_at_most_max_num_seqs_run_and_the_rest_wait_fifo() -> None:
    gate = Gate()
    engine = SimEngine(SimConfig(max_num_seqs=2), sleep=gate.sleep)
    order: list[int] = []

    async def one(i: int) -> None:
        async with engine.run(f"prompt {i}", model="m", max_tokens=1) as gen:
            order.append(i)
            async for _ in gen.tokens():
                pass

    tasks = [asyncio.create_task(one(i)) for i in range(5)]
    await until(lambda: engine.waiting == 3, "three waiting")
    assert engine.running == 2
    assert engine.stats().waiting_by_model == {"m": 3}
    gate.open()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert (engine.running, engine.waiting, engine.stats().request_success) == (0, 0, 5)


@pytest.mark.asyncio
async def test_cancelled_waiter_and_runner_release_their_place() -> None:
    gate = Gate()
    engine = SimEngine(SimConfig(max_num_seqs=1), sleep=gate.sleep)
    running = asyncio.create_task(finish(engine, "a"))
    waiting = asyncio.create_task(finish(engine, "b"))
    await until(lambda: engine.waiting == 1, "one waiting")
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


@pytest.mark.asyncio
async def test_admission_waits_for_free_kv_blocks() -> None:
    gate = Gate()
    config = SimConfig(max_num_seqs=8, kv_num_blocks=4, kv_block_size=4)
    engine = SimEngine(config, sleep=gate.sleep)
    big = asyncio.create_task(finish(engine, "a" * 48, max_tokens=1))  # 3 blocks
    await until(lambda: engine.running == 1, "first running")
    blocked = asyncio.create_task(finish(engine, "b" * 48, max_tokens=1))
    await until(lambda: engine.waiting == 1, "second waits for blocks")
    assert engine.running == 1
    gate.open()
    await asyncio.gather(big, blocked)
    assert engine.stats().request_success == 2


@pytest.mark.asyncio
async def test_prompt_larger_than_the_cache_still_runs() -> None:
    engine = SimEngine(SimConfig(time_scale=0, kv_num_blocks=2, kv_block_size=4))
    gen = await finish(engine, "q" * 400)
    assert gen.finished
    assert engine.kv.blocks_in_use == 0


@pytest.mark.asyncio
async def test_prefix_hits_are_counted_on_a_repeated_prompt() -> None:
    engine = SimEngine(SimConfig(time_scale=0, kv_block_size=16))
    prompt = "p" * 400  # 100 tokens, 6 full blocks
    assert (await finish(engine, prompt)).cached_tokens == 0
    assert (await finish(engine, prompt)).cached_tokens == 96
    stats = engine.stats()
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (200, 96)


@pytest.mark.asyncio
async def test_models_do_not_share_cached_blocks() -> None:
    engine = SimEngine(SimConfig(time_scale=0))
    await finish(engine, "p" * 400)
    async with engine.run("p" * 400, model="other", max_tokens=1) as gen:
        assert gen.cached_tokens == 0


@pytest.mark.asyncio
async def test_tokens_can_be_iterated_only_once() -> None:
    engine = SimEngine(SimConfig(time_scale=0))
    async with engine.run("x", model="m", max_tokens=1) as gen:
        async for _ in gen.tokens():
            pass
        with pytest.raises(RuntimeError, match="once"):
            async for _ in gen.tokens():
                pass


@pytest.mark.parametrize(
    "kwargs",
    [{"max_num_seqs": 0}, {"kv_block_size": 0}, {"time_scale": -1.0}, {"default_max_tokens": 0}],
    ids=["seqs", "block", "scale", "max-tokens"],
)
def test_config_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SimConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_resuming_tokens_after_release_is_refused() -> None:
    engine = SimEngine(SimConfig(time_scale=0))
    async with engine.run("x", model="m", max_tokens=3) as gen:
        it = aiter(gen.tokens())
        assert await anext(it) == "tok0"
    with pytest.raises(RuntimeError, match="released"):
        await anext(it)
    assert engine.kv.blocks_in_use == 0
