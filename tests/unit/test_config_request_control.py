"""Config of admission, passive health, model fallbacks and objectives."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from epp.config import Config, ConfigError, add_serve_arguments, load_config


def parse(argv: list[str], env: dict[str, str] | None = None) -> Config:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return load_config(parser.parse_args(argv), environ=env or {})


def test_defaults_are_the_reference_thresholds_and_no_cap() -> None:
    control = parse([]).request_control
    assert (control.saturation_queue_threshold, control.saturation_kv_threshold) == (5.0, 0.8)
    assert (control.retry_after_s, control.endpoint_max_inflight) == (1, 0)
    assert (control.failure_backoff_s, control.failure_max_backoff_s) == (1.0, 30.0)
    assert control.model_fallbacks == {} and control.objectives == {}


def test_file_keys(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text(
        "saturationDetector: {queueDepthThreshold: 8, kvCacheUtilThreshold: 0.75}\n"
        "admission: {retryAfter: 1500ms, endpointMaxInflight: 64}\n"
        "passiveHealth: {backoff: 500ms, maxBackoff: 1m}\n"
        "modelFallbacks: {big: [small, tiny], other: tiny}\n"
        "objectives: {batch: -1, chat: 10}\n"
    )
    control = parse(["--config-file", str(path)]).request_control
    assert (control.saturation_queue_threshold, control.saturation_kv_threshold) == (8.0, 0.75)
    assert control.retry_after_s == 2  # whole seconds, rounded up
    assert control.endpoint_max_inflight == 64
    assert (control.failure_backoff_s, control.failure_max_backoff_s) == (0.5, 60.0)
    assert control.model_fallbacks == {"big": ("small", "tiny"), "other": ("tiny",)}
    assert control.objectives == {"batch": -1, "chat": 10}


def test_flags_and_env_merge_over_the_file_by_name(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text("modelFallbacks: {a: [b], c: [d]}\nobjectives: {batch: -1, chat: 10}\n")
    control = parse(
        [
            "--config-file",
            str(path),
            "--model-fallback",
            "c=e,f",
            "--objective",
            "chat=20",
            "--endpoint-max-inflight",
            "3",
            "--retry-after",
            "5",
        ],
        env={
            "EPP_MODEL_FALLBACKS": "a=x g=h",
            "EPP_OBJECTIVES": "batch=-5",
            "EPP_ENDPOINT_MAX_INFLIGHT": "9",
            "EPP_SATURATION_KV_THRESHOLD": "0.9",
        },
    ).request_control
    assert control.model_fallbacks == {"a": ("x",), "c": ("e", "f"), "g": ("h",)}
    assert control.objectives == {"batch": -5, "chat": 20}
    assert control.endpoint_max_inflight == 3
    assert control.saturation_kv_threshold == 0.9
    assert control.retry_after_s == 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--saturation-queue-threshold", "0"], "greater than zero"),
        (["--saturation-kv-threshold", "much"], "not a number"),
        (["--endpoint-max-inflight", "-1"], "negative"),
        (["--failure-backoff", "10s", "--failure-max-backoff", "5s"], "shorter"),
        (["--model-fallback", "big"], "MODEL=FALLBACK"),
        (["--model-fallback", "big="], "fallback model names"),
        (["--model-fallback", "big=small,big"], "itself"),
        (["--objective", "batch=low"], "flag --objective: not an integer"),
    ],
    ids=[
        "queue-zero",
        "kv-not-a-number",
        "negative-cap",
        "max-below-initial",
        "fallback-without-models",
        "fallback-empty",
        "fallback-to-itself",
        "bad-priority",
    ],
)
def test_bad_values_name_their_source(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(argv)


def test_a_file_section_of_the_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text("modelFallbacks: [a, b]\n")
    with pytest.raises(ConfigError, match="modelFallbacks must be a mapping"):
        parse(["--config-file", str(path)])
