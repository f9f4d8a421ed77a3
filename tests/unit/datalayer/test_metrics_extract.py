"""Engine mappings and extraction: samples -> Metrics, with explicit aggregation."""

from __future__ import annotations

import math
from types import ModuleType

import pytest

from epp.datalayer import (
    errors,
    extract,
    metric_mappings,
    prometheus_text,
    scraper,
    static_discovery,
)
from epp.datalayer.endpoint import Metrics
from epp.datalayer.errors import MetricsExtractError
from epp.datalayer.extract import (
    KV_USAGE_TOLERANCE,
    Aggregation,
    aggregate,
    detect_mapping,
    extract_metrics,
)
from epp.datalayer.metric_mappings import (
    MAPPINGS,
    SGLANG,
    VLLM,
    MetricMapping,
    mappings_for,
    wanted_names,
)
from epp.datalayer.prometheus_text import Sample, parse_samples

AUTO = mappings_for("auto")


def metrics_of(text: str, mappings: tuple[MetricMapping, ...] = AUTO) -> Metrics:
    samples = parse_samples(text, wanted_names(mappings))
    mapping = detect_mapping(samples, mappings)
    if mapping is None:
        raise MetricsExtractError("no mapping")
    return extract_metrics(samples, mapping, updated_at=42.0)


def test_vllm(payloads: dict[str, str]) -> None:
    assert metrics_of(payloads["vllm"]) == Metrics(
        waiting_requests=5,
        running_requests=3,
        kv_cache_usage=0.25,
        kv_block_size=16,
        kv_num_blocks=27000,
        models=frozenset({"m"}),
        updated_at=42.0,
    )


def test_vllm_legacy_kv_name(payloads: dict[str, str]) -> None:
    metrics = metrics_of(payloads["vllm-legacy"])
    assert (metrics.running_requests, metrics.waiting_requests) == (1, 0)
    assert metrics.kv_cache_usage == 0.75
    assert metrics.kv_block_size is None and metrics.kv_num_blocks is None


def test_vllm_new_kv_name_wins_over_legacy() -> None:
    text = (
        "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"
        "vllm:gpu_cache_usage_perc 0.9\nvllm:kv_cache_usage_perc 0.1\n"
    )
    assert metrics_of(text).kv_cache_usage == 0.1


def test_sglang(payloads: dict[str, str]) -> None:
    assert metrics_of(payloads["sglang"]) == Metrics(
        waiting_requests=2,
        running_requests=8,
        kv_cache_usage=0.5,
        kv_block_size=1,
        kv_num_blocks=120000,
        models=frozenset({"m"}),
        updated_at=42.0,
    )


def test_auto_detects_each_engine(payloads: dict[str, str]) -> None:
    def detected(text: str) -> MetricMapping | None:
        return detect_mapping(parse_samples(text, wanted_names(AUTO)), AUTO)

    assert detected(payloads["vllm"]) is VLLM
    assert detected(payloads["vllm-legacy"]) is VLLM
    assert detected(payloads["sglang"]) is SGLANG
    assert detected("python_gc_objects_collected_total 3\n") is None


def test_series_per_model_sum_counts_and_max_kv() -> None:
    text = (
        'vllm:num_requests_running{model_name="a"} 2\n'
        'vllm:num_requests_running{model_name="b"} 3\n'
        'vllm:num_requests_waiting{model_name="a"} 1\n'
        'vllm:num_requests_waiting{model_name="b"} 4\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.3\n'
        'vllm:kv_cache_usage_perc{engine="1"} 0.8\n'
    )
    metrics = metrics_of(text)
    assert (metrics.running_requests, metrics.waiting_requests) == (5, 5)
    assert metrics.kv_cache_usage == 0.8


@pytest.mark.parametrize(
    ("values", "how", "expected"),
    [
        ([1.0, 2.0, 3.5], Aggregation.SUM, 6.5),
        ([0.2, 0.9, 0.4], Aggregation.MAX, 0.9),
        ([1.0, math.nan, 2.0], Aggregation.SUM, 3.0),
        ([math.inf, 0.5], Aggregation.MAX, 0.5),
        ([math.nan], Aggregation.SUM, None),
        ([], Aggregation.MAX, None),
    ],
    ids=["sum", "max", "nan-skipped", "inf-skipped", "only-nan", "empty"],
)
def test_aggregate(values: list[float], how: Aggregation, expected: float | None) -> None:
    assert aggregate([Sample({}, v) for v in values], how) == expected


def test_non_finite_only_is_an_error() -> None:
    text = (
        "vllm:num_requests_running NaN\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0\n"
    )
    with pytest.raises(MetricsExtractError, match="vllm:num_requests_running has no finite value"):
        metrics_of(text)


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        (
            "vllm:num_requests_running 1\nvllm:num_requests_waiting 1\n",
            "vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc",
        ),
        (
            "vllm:num_requests_running 1\nvllm:kv_cache_usage_perc 0.1\n",
            "vllm:num_requests_waiting",
        ),
    ],
    ids=["kv", "waiting"],
)
def test_missing_required_metric(text: str, missing: str) -> None:
    with pytest.raises(MetricsExtractError, match=f"metric {missing} not found"):
        metrics_of(text)


def test_counts_are_rounded() -> None:
    text = (
        "vllm:num_requests_running 2.6\nvllm:num_requests_waiting 0.4\nvllm:kv_cache_usage_perc 1\n"
    )
    metrics = metrics_of(text)
    assert (metrics.running_requests, metrics.waiting_requests) == (3, 0)
    assert metrics.kv_cache_usage == 1.0


GOOD = {
    "running": "vllm:num_requests_running 1\n",
    "waiting": "vllm:num_requests_waiting 1\n",
    "kv": "vllm:kv_cache_usage_perc 0.5\n",
}


@pytest.mark.parametrize(
    ("signal", "lines", "message"),
    [
        (
            "waiting",
            "vllm:num_requests_waiting -1\n",
            "vllm:num_requests_waiting is -1.0: a request count cannot be negative",
        ),
        (
            "running",
            'vllm:num_requests_running{engine="0"} -0.5\n',
            'vllm:num_requests_running{engine="0"} is -0.5: a request count cannot be negative',
        ),
        (
            # The two sum to 2: only a check of each series sees the broken one.
            "waiting",
            'vllm:num_requests_waiting{engine="0"} 3\nvllm:num_requests_waiting{engine="1"} -1\n',
            'vllm:num_requests_waiting{engine="1"} is -1.0: a request count cannot be negative',
        ),
        (
            "kv",
            "vllm:kv_cache_usage_perc -0.1\n",
            "vllm:kv_cache_usage_perc is -0.1: KV-cache use cannot be negative",
        ),
        (
            # The max of the two is 0.3: only a check of each series sees the broken one.
            "kv",
            'vllm:kv_cache_usage_perc{engine="0"} 0.3\nvllm:kv_cache_usage_perc{engine="1"} -0.2\n',
            'vllm:kv_cache_usage_perc{engine="1"} is -0.2: KV-cache use cannot be negative',
        ),
        (
            "kv",
            'vllm:kv_cache_usage_perc{model_name="m"} 85\n',
            'vllm:kv_cache_usage_perc{model_name="m"} is 85.0: expected the fraction of the '
            "KV cache in use, 0-1 (is it a percentage?)",
        ),
        (
            "kv",
            "vllm:kv_cache_usage_perc 1.001\n",
            "vllm:kv_cache_usage_perc is 1.001: expected the fraction",
        ),
    ],
    ids=[
        "negative-waiting",
        "negative-running",
        "negative-inside-a-sum",
        "negative-kv",
        "negative-kv-under-the-max",
        "kv-percentage",
        "kv-just-over-one",
    ],
)
def test_out_of_range_series_fail_the_scrape(signal: str, lines: str, message: str) -> None:
    text = "".join(lines if name == signal else good for name, good in GOOD.items())
    with pytest.raises(MetricsExtractError) as caught:
        metrics_of(text)
    assert str(caught.value).startswith(message)


def test_sglang_series_are_checked_too() -> None:
    text = "sglang:num_running_reqs 1\nsglang:num_queue_reqs -2\nsglang:token_usage 0.1\n"
    with pytest.raises(MetricsExtractError, match=r"^sglang:num_queue_reqs is -2\.0: "):
        metrics_of(text)


@pytest.mark.parametrize(
    "value", ["1", "1.0000001", "1.000001"], ids=["one", "float-noise", "at-tolerance"]
)
def test_kv_float_noise_over_one_counts_as_full(value: str) -> None:
    assert float(value) <= 1.0 + KV_USAGE_TOLERANCE
    text = (
        "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"
        f"vllm:kv_cache_usage_perc {value}\n"
    )
    assert metrics_of(text).kv_cache_usage == 1.0


def test_non_finite_series_are_skipped_not_range_checked() -> None:
    text = (
        'vllm:num_requests_running{engine="0"} -Inf\n'
        'vllm:num_requests_running{engine="1"} 2\n'
        "vllm:num_requests_waiting NaN\nvllm:num_requests_waiting 0\n"
        'vllm:kv_cache_usage_perc{engine="0"} +Inf\n'
        'vllm:kv_cache_usage_perc{engine="1"} 0.4\n'
    )
    metrics = metrics_of(text)
    assert (metrics.running_requests, metrics.waiting_requests) == (2, 0)
    assert metrics.kv_cache_usage == 0.4


def test_only_the_series_read_are_checked() -> None:
    # The legacy KV name is not read when the new one is present, so its percentage is
    # no reason to fail the scrape.
    text = (
        "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"
        "vllm:kv_cache_usage_perc 0.2\nvllm:gpu_cache_usage_perc 20\n"
    )
    assert metrics_of(text).kv_cache_usage == 0.2


def test_error_quotes_labels_escaped_and_cut_short() -> None:
    long = "x" * 1000
    text = (
        f'vllm:num_requests_running{{a="say \\"hi\\"",b="{long}"}} -1\n'
        "vllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0\n"
    )
    with pytest.raises(MetricsExtractError) as caught:
        metrics_of(text)
    message = str(caught.value)
    assert message.startswith('vllm:num_requests_running{a="say \\"hi\\"",b="xxx')
    assert "...} is -1.0: a request count cannot be negative" in message
    assert len(message) < 250


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ('block_size="32",num_gpu_blocks="100"', (32, 100)),
        ('block_size="16",num_gpu_blocks="None"', (16, None)),
        ('block_size="0"', (None, None)),
        ('block_size="sixteen",num_gpu_blocks="1e3"', (None, 1000)),
    ],
    ids=["both", "blocks-not-profiled", "zero", "junk-and-float"],
)
def test_cache_config_labels(labels: str, expected: tuple[int | None, int | None]) -> None:
    text = (
        "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"
        f"vllm:kv_cache_usage_perc 0\nvllm:cache_config_info{{{labels}}} 1\n"
    )
    metrics = metrics_of(text)
    assert (metrics.kv_block_size, metrics.kv_num_blocks) == expected


def test_explicit_engine_ignores_the_other_engine(payloads: dict[str, str]) -> None:
    mappings = mappings_for("sglang")
    samples = parse_samples(payloads["vllm"], wanted_names(mappings))
    assert detect_mapping(samples, mappings) is None


def test_mappings_registry() -> None:
    assert mappings_for("auto") == (VLLM, SGLANG)
    assert mappings_for("vllm") == (VLLM,)
    assert set(MAPPINGS) == {"vllm", "sglang"}
    assert all(MAPPINGS[name].engine == name for name in MAPPINGS)
    with pytest.raises(
        ValueError,
        match="unknown model-server engine 'trtllm'; expected one of: auto, sglang, vllm",
    ):
        mappings_for("trtllm")
    assert "vllm:cache_config_info" in wanted_names([VLLM])


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"waiting": (), "running": ("r",), "kv_usage": ("k",)}, ValueError),
        ({"waiting": "w", "running": ("r",), "kv_usage": ("k",)}, TypeError),
        ({"waiting": ("w",), "running": ("r",), "kv_usage": ("",)}, TypeError),
    ],
    ids=["empty-waiting", "string-not-tuple", "empty-name"],
)
def test_mapping_validation(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        MetricMapping(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "module",
    [errors, extract, metric_mappings, prometheus_text, scraper, static_discovery],
    ids=lambda m: m.__name__.rsplit(".", 1)[-1],
)
def test_dunder_all_is_complete(module: ModuleType) -> None:
    exported = module.__all__
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and getattr(value, "__module__", module.__name__) == module.__name__
        and (callable(value) or isinstance(value, type))
    }
    assert public <= set(exported)  # the order is ruff's (RUF022)


LORA_SERIES = (
    'vllm:lora_requests_info{{max_lora="2",'
    'running_lora_adapters="{}",waiting_lora_adapters="{}"}} {}\n'
)
LORA_PAGE = (
    'vllm:num_requests_waiting{model_name="m"} 0.0\n'
    'vllm:num_requests_running{model_name="m"} 1.0\n'
    'vllm:kv_cache_usage_perc{model_name="m"} 0.1\n'
    + LORA_SERIES.format("sql-lora", "", "1700000001.0")
    + LORA_SERIES.format("sql-lora, tweet-lora", "chat", "1700000009.5")
    + LORA_SERIES.format("", "", "1700000005.0")
)


def test_vllm_lora_info_comes_from_the_newest_series() -> None:
    metrics = metrics_of(LORA_PAGE)
    assert metrics.lora_running == frozenset({"sql-lora", "tweet-lora"})
    assert metrics.lora_waiting == frozenset({"chat"})
    assert metrics.max_lora == 2


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        ("", (frozenset(), frozenset(), None)),
        (
            'vllm:lora_requests_info{max_lora="0",running_lora_adapters="",'
            'waiting_lora_adapters=""} 5.0\n',
            (frozenset(), frozenset(), 0),
        ),
        (
            'vllm:lora_requests_info{max_lora="many",running_lora_adapters="a,,b,",'
            'waiting_lora_adapters=""} 5.0\n',
            (frozenset({"a", "b"}), frozenset(), None),
        ),
        (  # a series with no finite value says nothing
            'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a"} NaN\n',
            (frozenset(), frozenset(), None),
        ),
    ],
    ids=["absent", "zero-slots", "malformed-max-and-blank-names", "only-nan"],
)
def test_vllm_lora_info_edge_cases(
    series: str, expected: tuple[frozenset[str], frozenset[str], int | None]
) -> None:
    metrics = metrics_of(LORA_PAGE.split("vllm:lora_requests_info")[0] + series)
    assert (metrics.lora_running, metrics.lora_waiting, metrics.max_lora) == expected


def test_served_models_are_the_model_labels_of_the_load_series() -> None:
    text = (
        'vllm:num_requests_waiting{model_name="base-a",engine="0"} 0\n'
        'vllm:num_requests_waiting{model_name="base-b",engine="1"} 0\n'
        'vllm:num_requests_running{model_name="base-a",engine="0"} 1\n'
        'vllm:num_requests_running{engine="1"} 0\n'  # no label: names nothing
        'vllm:kv_cache_usage_perc{model_name="base-a"} 0.1\n'
        'vllm:cache_config_info{model_name="not-a-load-series",block_size="16"} 1\n'
    )
    assert metrics_of(text).models == frozenset({"base-a", "base-b"})


def test_served_models_are_bounded_in_count_and_length() -> None:
    names = [f"model-{i:03}" for i in range(extract.MAX_MODELS_PER_ENDPOINT + 5)]
    junk = ["x" * (extract.MAX_MODEL_NAME_CHARS + 1), "bad\\nname", ""]
    lines = [f'vllm:num_requests_waiting{{model_name="{name}"}} 0\n' for name in names + junk]
    text = "".join(lines) + "vllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n"
    # The first in sorted order; the too long, the unprintable and the empty left out.
    assert metrics_of(text).models == frozenset(names[: extract.MAX_MODELS_PER_ENDPOINT])


def test_a_page_without_model_labels_names_no_model() -> None:
    text = "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n"
    assert metrics_of(text).models == frozenset()
