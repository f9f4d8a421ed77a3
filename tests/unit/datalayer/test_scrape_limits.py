"""What one pod can make epp spend, and feed it: body and sample limits, range checks on
the values, back-off of a failing endpoint. Real HTTP on 127.0.0.1, a manual ticker and a
fake clock: no timing assertions."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from epp.config import DataLayerConfig, load_config
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.scrape_pace import default_max_backoff_s
from epp.datalayer.scraper import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_SAMPLES, MetricsScraper
from epp.datalayer.store import EndpointStore

MiB = 1024 * 1024


def padded(text: str, size: int) -> str:
    """``text`` followed by comment lines (which the parser skips) up to ``size`` bytes."""
    line = "# " + "x" * 1021 + "\n"
    missing = size - len(text)
    return text + line * (missing // len(line)) + "#" * (missing % len(line))


def wanted_lines(count: int) -> str:
    return "".join(f'vllm:num_requests_waiting{{x="{i}"}} 0\n' for i in range(count))


async def scrape(scraper: MetricsScraper, address: str) -> Endpoint:
    endpoint = Endpoint(address=address)
    await scraper.scrape_once(endpoint)
    return endpoint


# -- values out of range -----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        (
            'vllm:num_requests_waiting{engine="0",model_name="m"} 5.0',
            'vllm:num_requests_waiting{engine="0",model_name="m"} -5.0',
            'vllm:num_requests_waiting{engine="0",model_name="m"} is -5.0: '
            "a request count cannot be negative",
        ),
        (
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 25',
            "is 25.0: expected the fraction of the KV cache in use, 0-1 (is it a percentage?)",
        ),
    ],
    ids=["negative-queue", "kv-percentage"],
)
async def test_a_value_out_of_range_fails_the_scrape(
    model_server: Any, scrapers: Any, clock: Any, old: str, new: str, error: str
) -> None:
    scraper = scrapers(clock=clock)
    endpoint = await scrape(scraper, model_server.address)
    good = endpoint.metrics
    assert good.waiting_requests == 5

    assert old in model_server.body
    model_server.body = model_server.body.replace(old, new)
    await scraper.scrape_once(endpoint)
    assert endpoint.metrics is good  # kept, and going stale; never floored or clamped
    assert endpoint.scrape_failures == 1
    assert error in (endpoint.last_scrape_error or "")


# -- body size ---------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_over_the_limit_fails_the_scrape(
    model_server: Any, scrapers: Any, chunked: bool
) -> None:
    model_server.chunked = chunked
    model_server.body = padded(model_server.body, 300_000)
    at_limit = await scrape(scrapers(max_body_bytes=300_000), model_server.address)
    assert at_limit.scrape_failures == 0

    endpoint = await scrape(scrapers(max_body_bytes=299_999), model_server.address)
    assert endpoint.scrape_failures == 1
    error = endpoint.last_scrape_error or ""
    if chunked:
        assert error.endswith("/metrics: body is over the limit of 299999 bytes")
    else:  # refused on the header, before the body is read
        assert error.endswith("/metrics: body of 300000 bytes is over the limit of 299999")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("size", "ok"),
    [
        (1_500_000, True),  # ~64 data-parallel engines behind one server, unfiltered
        (DEFAULT_MAX_BODY_BYTES + 1, False),  # the old default (16 MiB) took this
    ],
    ids=["large-real-page", "over-4-MiB"],
)
async def test_default_body_limit(model_server: Any, scrapers: Any, size: int, ok: bool) -> None:
    assert DEFAULT_MAX_BODY_BYTES == 4 * MiB
    model_server.body = padded(model_server.body, size)
    endpoint = await scrape(scrapers(), model_server.address)
    assert (endpoint.scrape_failures == 0) is ok
    if not ok:
        assert "is over the limit of 4194304" in (endpoint.last_scrape_error or "")


@pytest.mark.asyncio
async def test_body_limit_zero_means_none(model_server: Any, scrapers: Any) -> None:
    model_server.body = padded(model_server.body, DEFAULT_MAX_BODY_BYTES + 1)
    endpoint = await scrape(scrapers(max_body_bytes=0), model_server.address)
    assert endpoint.scrape_failures == 0


# -- wanted samples ----------------------------------------------------------------------


# The default page (VLLM_TEXT) holds 4 wanted sample lines (running, waiting, KV use, cache config).
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kwargs", "extra", "error"),
    [
        ({}, DEFAULT_MAX_SAMPLES - 4, None),
        ({}, DEFAULT_MAX_SAMPLES - 3, "more samples of the wanted metrics than the limit of 1000"),
        ({"max_samples": 10}, 6, None),
        ({"max_samples": 10}, 7, "more samples of the wanted metrics than the limit of 10"),
        ({"max_samples": 0}, 5000, None),
    ],
    ids=["default-at-limit", "default-over", "custom-at-limit", "custom-over", "no-limit"],
)
async def test_wanted_sample_limit(
    model_server: Any, scrapers: Any, kwargs: dict[str, int], extra: int, error: str | None
) -> None:
    model_server.body += wanted_lines(extra)
    endpoint = await scrape(scrapers(**kwargs), model_server.address)
    if error is None:
        assert endpoint.scrape_failures == 0
        assert endpoint.metrics.waiting_requests == 5  # the extra series hold 0 each
    else:
        assert endpoint.scrape_failures == 1
        assert f": vllm:num_requests_waiting: {error}" in (endpoint.last_scrape_error or "")


@pytest.mark.asyncio
async def test_one_enormous_wanted_line_fails_the_scrape(model_server: Any, scrapers: Any) -> None:
    # One line, so under any count of lines, but 20,000 labels for Python to parse.
    labels = ",".join(f'l{i}="v"' for i in range(20_000))
    model_server.body += f"vllm:num_requests_running{{{labels}}} 0\n"
    endpoint = await scrape(scrapers(), model_server.address)
    assert endpoint.scrape_failures == 1
    error = endpoint.last_scrape_error or ""
    assert "vllm:num_requests_running: the wanted metrics' samples hold more than 64000" in error


# -- what a failure may store and log ------------------------------------------------------


@pytest.mark.asyncio
async def test_failure_text_from_the_pod_is_cut_short(model_server: Any, scrapers: Any) -> None:
    model_server.body = "vllm:num_requests_running 1 2 " + "z" * 20_000 + "\n"
    endpoint = await scrape(scrapers(), model_server.address)
    error = endpoint.last_scrape_error or ""
    assert error.startswith("line 1: vllm:num_requests_running: expected 'value [timestamp]'")
    assert error.endswith("zzz...")
    assert len(error) == 403


# -- back-off ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_failing_endpoint_is_polled_less_often_until_it_recovers(
    model_server: Any, scrapers: Any, ticker: Any, clock: Any, wait_until: Any
) -> None:
    model_server.status = 500
    store = EndpointStore()
    store.replace([(model_server.address, None)])
    endpoint = store.get(model_server.address)
    assert endpoint is not None
    scraper = scrapers(store, sleep=ticker.sleep, clock=clock, interval_s=0.05, max_backoff_s=1.0)
    await scraper.start()  # the first scrape fails
    await wait_until(lambda: ticker.sleeping == 1, "the task's first sleep")
    for failures in range(2, 9):
        ticker.tick()
        await wait_until(
            lambda n=failures: endpoint.scrape_failures == n and ticker.sleeping == 1,
            f"failure {failures}",
        )
    # The clock stands still, so each sleep is the whole delay: the first retry at the
    # normal pace, then doubling up to the cap.
    assert ticker.delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert model_server.requests == 8

    model_server.status = 200
    ticker.tick()
    await wait_until(lambda: endpoint.scrape_failures == 0 and ticker.sleeping == 1, "recovery")
    assert ticker.delays[-1] == 0.05  # a success resets the pace at once

    model_server.status = 500
    ticker.tick()
    await wait_until(lambda: endpoint.scrape_failures == 1 and ticker.sleeping == 1, "a blip")
    assert ticker.delays[-1] == 0.05


@pytest.mark.asyncio
async def test_back_off_counts_the_time_a_poll_took(
    model_server: Any, scrapers: Any, ticker: Any, clock: Any, wait_until: Any
) -> None:
    model_server.status = 500

    def poll_takes_30_ms() -> None:
        clock.now += 0.03

    model_server.on_request = poll_takes_30_ms
    store = EndpointStore()
    scraper = scrapers(store, sleep=ticker.sleep, clock=clock, interval_s=0.05, max_backoff_s=1.0)
    await scraper.start()
    store.replace([(model_server.address, None)])
    endpoint = store.get(model_server.address)
    assert endpoint is not None
    for failures in range(1, 5):
        await wait_until(
            lambda n=failures: endpoint.scrape_failures == n and ticker.sleeping == 1,
            f"failure {failures}",
        )
        ticker.tick()
    await wait_until(lambda: endpoint.scrape_failures == 5 and ticker.sleeping == 1, "failure 5")
    # Polls start 50, 100, 200, 400, 800 ms apart: each sleep is the delay less 30 ms.
    assert ticker.delays == pytest.approx([0.02, 0.07, 0.17, 0.37, 0.77])


@pytest.mark.parametrize(
    ("kwargs", "delays"),
    [
        ({"interval_s": 0.05}, [0.05, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]),
        ({"interval_s": 0.05, "max_backoff_s": 0.3}, [0.05, 0.05, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3]),
        ({"interval_s": 0.05, "max_backoff_s": 0}, [0.05] * 8),  # back-off off
        ({"interval_s": 2.0}, [2.0] * 8),  # an interval over the cap is kept
    ],
    ids=["default", "lower-cap", "off", "long-interval"],
)
def test_poll_delays(kwargs: dict[str, Any], delays: list[float]) -> None:
    scraper = MetricsScraper(EndpointStore(), **kwargs)
    assert [scraper.poll_delay_s(failures) for failures in range(8)] == delays
    assert scraper.poll_delay_s(10_000) == delays[-1]  # no overflow


@pytest.mark.parametrize(("staleness_s", "cap_s"), [(2.0, 1.0), (1.0, 0.5), (10.0, 1.0)])
def test_default_max_backoff(staleness_s: float, cap_s: float) -> None:
    assert default_max_backoff_s(staleness_s) == cap_s
    assert MetricsScraper(EndpointStore()).max_backoff_s == default_max_backoff_s() == 1.0


# -- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_body_bytes": -1}, "max_body_bytes must be >= 0"),
        ({"max_samples": -1}, "max_samples must be >= 0"),
        ({"max_backoff_s": -1.0}, "max_backoff_s must be >= 0"),
    ],
    ids=["body", "samples", "backoff"],
)
def test_bad_limits(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MetricsScraper(EndpointStore(), **kwargs)


def test_config_defaults_are_the_scraper_defaults() -> None:
    config = DataLayerConfig()
    assert config.scrape_max_bytes == DEFAULT_MAX_BODY_BYTES
    assert config.scrape_max_samples == DEFAULT_MAX_SAMPLES


def test_limits_come_from_flags_env_and_file() -> None:
    args = argparse.Namespace(
        config_text="dataLayer: {scrapeMaxSamples: 300}",
        data_layer_scrape_max_bytes="1048576",
    )
    config = load_config(args, environ={"EPP_SCRAPE_MAX_SAMPLES": "0"})
    assert config.data_layer.scrape_max_bytes == 1048576
    assert config.data_layer.scrape_max_samples == 0  # env over file; 0: no limit
    config = load_config(argparse.Namespace(config_text="dataLayer: {scrapeMaxSamples: 300}"), {})
    assert config.data_layer.scrape_max_samples == 300
