"""PageShape: a page that differs from the remembered one only in its numbers is read as
the parser reads it; any other page is left to the parser."""

from __future__ import annotations

from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.datalayer.errors import MetricsExtractError
from epp.datalayer.extract import extract_metrics
from epp.datalayer.metric_mappings import AUTO, mappings_for, wanted_names
from epp.datalayer.page_shape import PageShape
from epp.datalayer.prometheus_text import parse_samples

NAMES = wanted_names(mappings_for(AUTO))
VLLM = mappings_for("vllm")[0]

PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="m",engine="0"}} {r}
vllm:num_requests_running{{model_name="m",engine="1"}} {r2}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{model_name="m",engine="0"}} {w}
vllm:num_requests_waiting{{model_name="m",engine="1"}} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
vllm:kv_cache_usage_perc{{model_name="m",engine="0"}} {kv}
vllm:cache_config_info{{block_size="16",label="a b",num_gpu_blocks="27500"}} 1.0
vllm:e2e_request_latency_seconds_count{{model_name="m"}} {count}
"""


def page(
    r: str = "3.0", w: str = "1.0", kv: str = "0.25", r2: str = "2.0", count: str = "7.0"
) -> str:
    return PAGE.format(r=r, w=w, kv=kv, r2=r2, count=count)


def shape_of(text: str) -> PageShape:
    shape = PageShape.of(text, NAMES, parse_samples(text, NAMES), VLLM)
    assert shape is not None
    return shape


@pytest.mark.parametrize(
    "new",
    [
        page(),
        page(r="0.0", w="12.0", kv="0.9"),
        page(kv="NaN"),
        page(r="+Inf"),
        page(kv="1e-3"),
        page(r="3.0\r"),
    ],
    ids=["same", "numbers-moved", "nan", "inf", "exponent", "cr"],
)
def test_a_page_with_the_same_lines_reads_as_the_parser_reads_it(new: str) -> None:
    # repr: NaN is not equal to itself
    shape = shape_of(page())
    assert repr(shape.read(new)) == repr(parse_samples(new, NAMES))
    try:
        expected: Metrics | None = extract_metrics(parse_samples(new, NAMES), VLLM, updated_at=1.0)
    except MetricsExtractError:
        expected = None
    assert shape.read_metrics(new, updated_at=1.0) == expected


@pytest.mark.parametrize(
    "new",
    [
        page(r="1_0"),  # float() takes it, the format does not
        page(r="three"),
        page(r="3.0 1700000000000"),  # a timestamp appeared
        page(kv="0." + "1" * 80),  # a value longer than the parser should see unchecked
        page(count="9.0"),  # an unwanted line changed: only wanted values may
        page().replace('engine="1"', 'engine="2"'),
        page().replace("# HELP vllm:kv", "# HELP  vllm:kv"),
        page() + 'vllm:num_requests_running{model_name="m",engine="2"} 1.0\n',
        page().replace("vllm:cache_config_info", "# vllm:cache_config_info"),
        "",
    ],
    ids=[
        "underscore",
        "word",
        "timestamp",
        "long-value",
        "unwanted-changed",
        "labels-changed",
        "comment-changed",
        "line-added",
        "line-commented-out",
        "empty",
    ],
)
def test_any_other_page_goes_to_the_parser(new: str) -> None:
    assert shape_of(page()).read(new) is None
    assert shape_of(page()).read_metrics(new, updated_at=1.0) is None


@pytest.mark.parametrize(
    "text",
    [page(r="3.0 1700000000000"), page() + "vllm:num_requests_running 1.0 \n"],
    ids=["timestamp", "trailing-blank"],
)
def test_no_shape_is_kept_for_a_page_it_cannot_match_line_for_line(text: str) -> None:
    assert PageShape.of(text, NAMES, parse_samples(text, NAMES), VLLM) is None


@pytest.mark.asyncio
async def test_the_scraper_reads_moving_numbers_and_still_refuses_bad_ones(
    model_server: Any, scrapers: Any
) -> None:
    scraper = scrapers()
    endpoint = Endpoint(address=model_server.address)
    for r, w, kv in (("3.0", "1.0", "0.25"), ("4.0", "0.0", "0.5"), ("0.0", "7.0", "0.75")):
        model_server.body = page(r=r, w=w, kv=kv)
        await scraper.scrape_once(endpoint)
        assert endpoint.scrape_failures == 0, endpoint.last_scrape_error
        metrics = endpoint.metrics
        assert (metrics.running_requests, metrics.waiting_requests, metrics.kv_cache_usage) == (
            round(float(r)) + 2,
            round(float(w)),
            float(kv),
        )
        assert metrics.kv_num_blocks == 27500
    model_server.body = page(kv="1.5")  # the same lines, a value out of range
    await scraper.scrape_once(endpoint)
    assert "1.5" in (endpoint.last_scrape_error or "")
    model_server.body = page(r="x")  # the same lines, a value that does not parse
    await scraper.scrape_once(endpoint)
    assert "bad number 'x'" in (endpoint.last_scrape_error or "")
    assert endpoint.metrics.kv_cache_usage == 0.75


LORA = (
    'vllm:lora_requests_info{{max_lora="2",running_lora_adapters="a",'
    'waiting_lora_adapters=""}} {old}\n'
    'vllm:lora_requests_info{{max_lora="2",running_lora_adapters="a,b",'
    'waiting_lora_adapters="c"}} {new}\n'
)


@pytest.mark.parametrize(
    ("old", "new"), [("5.0", "9.0"), ("9.0", "5.0")], ids=["second-newer", "first-newer"]
)
def test_the_lora_series_that_is_newest_by_value_wins_on_the_fast_path(old: str, new: str) -> None:
    shape = shape_of(page() + LORA.format(old="5.0", new="9.0"))
    text = page() + LORA.format(old=old, new=new)
    expected = extract_metrics(parse_samples(text, NAMES), VLLM, updated_at=1.0)
    read = shape.read_metrics(text, updated_at=1.0)
    assert read == expected
    assert read is not None
    assert read.lora_running == (frozenset({"a", "b"}) if new == "9.0" else frozenset({"a"}))
