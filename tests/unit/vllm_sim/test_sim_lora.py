"""The simulator's LoRA model: slots, LRU eviction, load stalls, the scheduler's adapter
limit, and what /metrics, /v1/models and the flags say about it."""

from __future__ import annotations

import argparse
from dataclasses import replace

import aiohttp
import pytest

from epp.datalayer.extract import lora_info
from epp.datalayer.metric_mappings import VLLM
from epp.datalayer.prometheus_text import parse_samples
from vllm_sim import PodSpec, start_pod
from vllm_sim.cli import config_from_args, configure_parser, specs_from_args
from vllm_sim.engine import SimConfig, SimEngine, StepPlan
from vllm_sim.lora import LoraSlots
from vllm_sim.metrics import LORA_INFO_SERIES, LORA_LOADS, MetricsRenderer

from .helpers import FAST

# One step costs 1 s plus 0.01 s per token; loading an adapter from disk 0.5 s more,
# activating it from host memory 0.25 s.
LORA = SimConfig(
    time_scale=0, base_latency_s=0.0, decode_s_per_token=1.0, prefill_s_per_token=0.01,
    kv_read_s_per_token=0.0, decode_s_per_seq=0.0, max_loras=1, lora_load_s=0.5,
    lora_activate_s=0.25,
)  # fmt: skip


def drain(engine: SimEngine) -> list[StepPlan]:
    plans = []
    while (plan := engine.step()) is not None:
        plans.append(plan)
        assert len(plans) < 1000
    return plans


def test_slots_load_from_disk_then_from_host_memory() -> None:
    slots = LoraSlots(1, 2, load_s=0.5, activate_s=0.25)
    assert slots.prepare({"a"}) == 0.75  # disk, then into the slot
    assert slots.prepare({"a"}) == 0.0  # resident
    assert slots.prepare({"b"}) == 0.75  # evicts a from the one slot
    assert slots.prepare({"a"}) == 0.25  # still in host memory: only the copy
    stats = slots.stats()
    assert (stats.loads_from_disk, stats.loads_from_cpu, stats.loads) == (2, 1, 3)
    assert (stats.on_gpu, stats.gpu_evictions) == (("a",), 2)
    assert stats.on_cpu == ("b", "a")


def test_slots_evict_the_least_recently_used_idle_adapter() -> None:
    slots = LoraSlots(2, 2, load_s=1.0, activate_s=0.0)
    slots.prepare({"a"})
    slots.prepare({"b"})
    slots.prepare({"a"})  # a is now the most recently used
    slots.prepare({"c"})  # evicts b, the least recently used
    assert slots.stats().on_gpu == ("a", "c")
    # A step using a and d: a is older than c, but it is in use, so c goes.
    slots.prepare({"a", "d"})
    assert set(slots.stats().on_gpu) == {"a", "d"}


def test_slots_refuse_more_adapters_than_slots() -> None:
    slots = LoraSlots(2, 2, load_s=0.0, activate_s=0.0)
    with pytest.raises(ValueError, match="3 adapters in one step"):
        slots.prepare({"a", "b", "c"})
    with pytest.raises(ValueError, match="max_cpu_loras"):
        LoraSlots(2, 1, load_s=0.0, activate_s=0.0)


def test_a_load_stalls_the_whole_step_once() -> None:
    engine = SimEngine(LORA, lora_adapters=("a",))
    base = engine.submit("x" * 40, model="base", max_tokens=2)
    first = engine.submit("y" * 40, model="a", max_tokens=2)
    plans = drain(engine)
    # Both run in the first step, which also loads a: the base request waits for it too.
    assert plans[0].lora_load_s == 0.75
    assert plans[0].duration_s == pytest.approx(1.0 + 0.75)
    assert base.first_token_s == first.first_token_s == pytest.approx(1.75)
    assert [p.lora_load_s for p in plans[1:]] == [0.0]
    second = engine.submit("z" * 40, model="a", max_tokens=1)
    assert drain(engine)[0].lora_load_s == 0.0  # still resident
    assert second.finished
    stats = engine.stats().lora
    assert stats is not None and stats.loads == 1


def test_a_step_runs_at_most_max_loras_adapters_and_others_are_skipped_not_blocking() -> None:
    engine = SimEngine(LORA, lora_adapters=("a", "b"))
    a = engine.submit("a" * 40, model="a", max_tokens=3)
    b = engine.submit("b" * 40, model="b", max_tokens=1)
    base = engine.submit("c" * 40, model="base", max_tokens=2)
    plan = engine.step()
    assert plan is not None
    # b waits (one slot, taken by a); the base request behind it is admitted.
    assert {g.model for g, _ in plan.scheduled} == {"a", "base"}
    assert engine.stats().waiting_by_model == {"b": 1}
    assert engine.stats().running_by_model == {"a": 1, "base": 1}
    plans = drain(engine)
    assert a.finished and b.finished and base.finished
    # b ran only once a had finished, and had to load (evicting a).
    b_step = next(p for p in plans if any(g is b for g, _ in p.scheduled))
    assert all(g.model != "a" for g, _ in b_step.scheduled)
    assert b_step.lora_load_s == 0.75
    assert b.first_token_s is not None and a.last_token_s <= b.first_token_s


def test_waiting_order_is_kept_for_skipped_requests() -> None:
    engine = SimEngine(replace(LORA, max_num_seqs=1), lora_adapters=("a", "b"))
    gens = [engine.submit(f"{i}" * 40, model=m, max_tokens=1) for i, m in enumerate("abab")]
    finished = []
    while engine.step() is not None:
        finished += [g for g in gens if g.finished and g not in finished]
    assert finished == gens  # one at a time, in arrival order


def lora_series(text: str) -> list[tuple[dict[str, str], float]]:
    samples = parse_samples(text, {"vllm:lora_requests_info"})
    return [(dict(s.labels), s.value) for s in samples["vllm:lora_requests_info"]]


def test_lora_requests_info_tells_the_truth_and_keeps_old_series() -> None:
    engine = SimEngine(replace(LORA, max_loras=1), lora_adapters=("a", "b"))
    renderer = MetricsRenderer(engine, ["base", "a", "b"])
    engine.submit("a" * 40, model="a", max_tokens=3)
    engine.submit("b" * 40, model="b", max_tokens=1)
    engine.step()
    first = renderer.render()
    assert (
        'vllm:lora_requests_info{max_lora="1",waiting_lora_adapters="b",'
        'running_lora_adapters="a"}' in first
    )
    drain(engine)
    second = renderer.render()
    series = lora_series(second)
    assert [s[0]["running_lora_adapters"] for s in series] == ["a", ""]
    assert series[1][1] >= series[0][1]  # the current series is the newest
    # What epp reads from the page: the newest series.
    running, waiting, max_lora = lora_info(parse_samples(second, VLLM.lora_info), VLLM)
    assert (running, waiting, max_lora) == (frozenset(), frozenset(), 1)
    assert f'{LORA_LOADS}{{source="disk"}} 2.0' in second
    assert f'{LORA_LOADS}{{source="cpu"}} 0.0' in second


def test_lora_series_are_bounded() -> None:
    engine = SimEngine(LORA, lora_adapters=("a",))
    renderer = MetricsRenderer(engine, ["base", "a"])
    for i in range(LORA_INFO_SERIES + 5):
        engine.submit(f"{i}" * 40, model="a", max_tokens=1)
        renderer.render()  # waiting "a"
        drain(engine)
        renderer.render()  # nothing
    # Two combinations only, each kept once.
    assert len(lora_series(renderer.render())) == 2


def test_no_lora_metrics_without_adapters() -> None:
    text = MetricsRenderer(SimEngine(LORA), ["base"]).render()
    assert "vllm:lora_requests_info" not in text
    assert LORA_LOADS not in text


@pytest.mark.asyncio
async def test_models_lists_adapters_as_vllm_does() -> None:
    spec = PodSpec(models=("base", "v1", "v2"), lora_paths=(("v1", "/adapters/v1"),))
    pod = await start_pod(spec, FAST)
    try:
        async with aiohttp.ClientSession(base_url=pod.url) as session:
            async with session.get("/v1/models") as r:
                cards = (await r.json())["data"]
    finally:
        await pod.close()
    assert [(c["id"], c["root"], c["parent"]) for c in cards] == [
        ("base", "base", None),
        ("v1", "/adapters/v1", "base"),
        ("v2", "v2", "base"),  # no path given: its name
    ]
    assert cards[0]["max_model_len"] == 131_072
    assert cards[1]["max_model_len"] is None


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(argv)


def test_flags_as_vllm_spells_them() -> None:
    args = parse(
        ["--pods", "2", "--first-port", "9000", "--model", "qwen", "--enable-lora",
         "--max-loras", "2", "--max-cpu-loras", "4", "--lora-load-ms", "80",
         "--lora-modules", "travel-helper-v1=/adapters/v1",
         '{"name": "travel-helper-v2", "path": "/adapters/v2"}']
    )  # fmt: skip
    config = config_from_args(args)
    assert (config.max_loras, config.max_cpu_loras, config.cpu_loras) == (2, 4, 4)
    assert config.lora_load_s == pytest.approx(0.08)
    specs = specs_from_args(args)
    assert [s.models for s in specs] == [("qwen", "travel-helper-v1", "travel-helper-v2")] * 2
    assert dict(specs[0].lora_paths) == {
        "travel-helper-v1": "/adapters/v1",
        "travel-helper-v2": "/adapters/v2",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lora-modules", "a=/p"], "needs --enable-lora"),
        (["--enable-lora", "--lora-modules", "a=/p", "a=/q"], "named twice"),
        (["--enable-lora", "--lora-modules", "m=/p"], "already serves m"),
        (["--max-loras", "2", "--max-cpu-loras", "1"], "max_cpu_loras"),
    ],
    ids=["not-enabled", "twice", "clash-with-base", "cpu-below-gpu"],
)
def test_bad_lora_flags(argv: list[str], message: str) -> None:
    args = parse(["--pod", "127.0.0.1:9000=m", *argv])
    with pytest.raises(ValueError, match=message):
        specs_from_args(args)
        config_from_args(args)


@pytest.mark.parametrize("value", ["novalue", "=path", "name=", '{"name": "x"}', "[1]", "a,b=p"])
def test_bad_lora_module_is_refused(value: str) -> None:
    with pytest.raises(SystemExit):
        parse(["--lora-modules", value])
