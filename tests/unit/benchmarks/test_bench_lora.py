"""benchmarks/bench_lora.py's pure parts: the workload, the configs it runs, the knee."""

from __future__ import annotations

import argparse
from collections import Counter

import pytest

from benchmarks.bench_lora import ADAPTERS, config_yaml, knee, with_lora_scorer, workload
from epp.config import add_serve_arguments, build_scheduler_from_config, load_config
from epp.scheduling.scheduler import default_scheduler_config


def test_workload_is_deterministic_skewed_and_unshared() -> None:
    requests = workload(10.0, 100.0, seed=1)
    assert requests == workload(10.0, 100.0, seed=1)
    assert 800 < len(requests) < 1200
    counts = Counter(adapter for _, adapter, _ in requests)
    assert set(counts) == set(ADAPTERS)
    assert counts[ADAPTERS[0]] > 3 * counts[ADAPTERS[-1]]  # Zipf: the head dominates
    prompts = {body["messages"][0]["content"] for _, _, body in requests}
    assert len(prompts) == len(requests)  # no prefix to share
    assert all(body["model"] == adapter for _, adapter, body in requests)


@pytest.mark.parametrize(("weight", "predict"), [(0.0, True), (2.0, True), (1.0, False)])
def test_configs_load_as_epp_configs(weight: float, predict: bool) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    text = config_yaml(
        with_lora_scorer(default_scheduler_config(), weight, predict_residency=predict)
    )
    config = load_config(parser.parse_args(["--config-text", text]), environ={})
    build_scheduler_from_config(config)
    weights = {r.plugin_ref: r.weight for r in config.scheduler.profiles[0].plugins}
    assert weights.get("lora-affinity-scorer") == (weight or None)
    lora = [p for p in config.scheduler.plugins if p.type == "lora-affinity-scorer"]
    assert [dict(p.parameters) for p in lora] == (
        [] if not weight else [{} if predict else {"predictResidency": False}]
    )


def test_knee_is_where_round_robin_latency_triples() -> None:
    rows = [
        {"contender": "envoy-rr", "offered_rps": rate, "ttft_p90_s": p90}
        for rate, p90 in ((8.0, 0.1), (16.0, 0.25), (24.0, 0.4), (32.0, 2.0))
    ] + [{"contender": "epp-no-lora", "offered_rps": 32.0, "ttft_p90_s": 0.1}]
    assert knee(rows) == 16.0
    assert knee([]) is None
