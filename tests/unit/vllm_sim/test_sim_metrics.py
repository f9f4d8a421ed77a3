from __future__ import annotations

import re

import pytest

from vllm_sim.engine import SimConfig, SimEngine
from vllm_sim.histogram import Histogram
from vllm_sim.metrics import MetricsRenderer

from .helpers import metric_value

NAMES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:num_preemptions_total",
)
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-z_]+="[^"]*",?)*\})? \S+$')


async def served(engine: SimEngine, prompt: str) -> None:
    async with engine.run(prompt, model="m", max_tokens=3) as gen:
        async for _ in gen.tokens():
            pass


def test_metrics_match_the_engine_state_step_by_step() -> None:
    config = SimConfig(
        time_scale=0, base_latency_s=0.0, max_num_seqs=2, kv_num_blocks=6, kv_block_size=4,
        decode_s_per_token=0.5, prefill_s_per_token=0.0, kv_read_s_per_token=0.0,
    )  # fmt: skip
    engine = SimEngine(config)
    renderer = MetricsRenderer(engine, ["m"])
    for i in range(3):
        engine.submit(chr(ord("a") + i) * 32, model="m", max_tokens=12)  # 8 tokens each
    preempted = False
    while engine.step() is not None:
        text, s = renderer.render(), engine.stats()
        assert metric_value(text, "vllm:num_requests_running") == s.running
        assert metric_value(text, "vllm:num_requests_waiting") == s.waiting
        assert metric_value(text, "vllm:kv_cache_usage_perc") == s.kv_blocks_in_use / 6
        assert metric_value(text, "vllm:num_preemptions_total") == s.preemptions
        assert s.running + s.waiting + s.request_success == 3
        preempted |= s.preemptions > 0
    assert preempted
    text = renderer.render()
    assert metric_value(text, "vllm:generation_tokens_total") == 36
    # Histograms are in simulated seconds: every step takes 0.5 s here.
    ttft_sum = engine.histograms.ttft_s.sum
    assert ttft_sum > 0 and ttft_sum % 0.5 == 0
    assert f'vllm:time_to_first_token_seconds_sum{{model_name="m",engine="0"}} {ttft_sum!r}' in (
        text
    )


@pytest.mark.asyncio
async def test_exposition_has_vllm_names_help_type_and_values() -> None:
    engine = SimEngine(SimConfig(time_scale=0))
    await served(engine, "p" * 400)
    await served(engine, "p" * 400)
    text = MetricsRenderer(engine, ["m"]).render()
    for name in NAMES:
        assert f"# TYPE {name} " in text
        assert f"# HELP {name} " in text
    assert text.endswith("\n")
    assert all(SAMPLE.match(line) for line in text.splitlines() if not line.startswith("#"))
    assert metric_value(text, "vllm:prefix_cache_queries_total") == 200
    assert metric_value(text, "vllm:prefix_cache_hits_total") == 96
    assert metric_value(text, "vllm:prompt_tokens_total") == 200
    assert metric_value(text, "vllm:generation_tokens_total") == 6
    assert metric_value(text, "vllm:kv_cache_usage_perc") == 0
    assert 'vllm:request_success_total{model_name="m",engine="0",finished_reason="length"} 2.0' in (
        text
    )
    assert 'block_size="16"' in text and 'num_gpu_blocks="27500"' in text
    assert 'vllm:time_to_first_token_seconds_bucket{model_name="m",engine="0",le="+Inf"} 2.0' in (
        text
    )
    assert "vllm:gpu_cache_usage_perc" not in text
    assert "vllm:lora_requests_info" not in text
    assert len(text) > 10_000  # realistically large for scrapers


def test_legacy_metric_names() -> None:
    text = MetricsRenderer(SimEngine(SimConfig(legacy_metric_names=True)), ["m"]).render()
    assert metric_value(text, "vllm:gpu_cache_usage_perc") == 0
    assert "vllm:kv_cache_usage_perc" not in text


def test_extra_models_are_reported_as_lora_adapters() -> None:
    engine = SimEngine(SimConfig(max_loras=2), lora_adapters=("a", "b"))
    text = MetricsRenderer(engine, ["base", "a", "b"]).render()
    assert (
        'vllm:lora_requests_info{max_lora="2",waiting_lora_adapters="",running_lora_adapters=""}'
        in text
    )
    assert 'model_name="base"' in text
    assert 'model_name="a"' not in text


def test_label_values_are_escaped() -> None:
    text = MetricsRenderer(SimEngine(), ['we"ird\\name']).render()
    assert 'model_name="we\\"ird\\\\name"' in text


def test_histogram_is_cumulative() -> None:
    hist = Histogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 9.0):
        hist.observe(value)
    assert hist.cumulative() == [2, 3, 4]
    assert (hist.count, hist.sum) == (4, 12.0)
    with pytest.raises(ValueError):
        Histogram((2.0, 1.0))


def test_name_filter_renders_only_the_asked_families() -> None:
    from vllm_sim.engine import SimEngine
    from vllm_sim.metrics import MetricsRenderer

    renderer = MetricsRenderer(SimEngine(), ("m",))
    everything = renderer.render()
    asked = frozenset(
        {
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:time_to_first_token_seconds_bucket",
        }
    )
    filtered = renderer.render(asked)
    families = {line.split()[2] for line in filtered.splitlines() if line.startswith("# TYPE")}
    assert families == {
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds",
    }
    assert len(filtered) < len(everything) / 2
    assert renderer.render(frozenset({"no:such_metric"})) == ""
