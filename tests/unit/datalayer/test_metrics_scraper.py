"""MetricsScraper against real HTTP servers on 127.0.0.1 (aiohttp servers), with a manual ticker
and a fake clock: no wall-time assertions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.datalayer.scrape_pace import default_timeout_s
from epp.datalayer.scraper import MetricsScraper
from epp.datalayer.store import EndpointStore

LOGGER = "epp.datalayer.scraper"
M = frozenset({"m"})  # the model_name label of every test page


def endpoint_for(address: str) -> Endpoint:
    return Endpoint(address=address)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("vllm", Metrics(5, 3, 0.25, 16, 27000, models=M, updated_at=1000.0)),
        ("vllm-legacy", Metrics(0, 1, 0.75, None, None, models=M, updated_at=1000.0)),
        ("sglang", Metrics(2, 8, 0.5, 1, 120000, models=M, updated_at=1000.0)),
    ],
    ids=["vllm", "vllm-legacy-kv-name", "sglang"],
)
async def test_scrape_once_lands_metrics(
    model_server: Any,
    scrapers: Any,
    clock: Any,
    payloads: dict[str, str],
    payload: str,
    expected: Metrics,
) -> None:
    model_server.body = payloads[payload]
    scraper = scrapers(clock=clock)
    endpoint = endpoint_for(model_server.address)
    await scraper.scrape_once(endpoint)
    assert endpoint.metrics == expected
    assert endpoint.scrape_failures == 0
    assert endpoint.last_scrape_error is None
    # Uncompressed on purpose (see MetricsScraper); one GET of the configured path.
    assert model_server.request_headers[0]["Accept-Encoding"] == "identity"


@pytest.mark.asyncio
@pytest.mark.parametrize("filter_names", [True, False], ids=["filtered", "unfiltered"])
async def test_asks_only_for_the_series_it_reads(
    model_server: Any, scrapers: Any, filter_names: bool
) -> None:
    endpoint = endpoint_for(model_server.address)
    await scrapers(filter_names=filter_names).scrape_once(endpoint)
    assert endpoint.scrape_failures == 0
    asked = {value for key, value in model_server.request_queries[0] if key == "name[]"}
    if filter_names:
        # prometheus_client's name[] filter: the gauges of both engines, no histograms.
        assert {
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",
            "sglang:num_queue_reqs",
        } <= asked
        assert not any("bucket" in name or "seconds" in name for name in asked)
    else:
        assert asked == set()


@pytest.mark.asyncio
async def test_custom_path(make_server: Any, scrapers: Any) -> None:
    server = await make_server("/stats/prometheus")
    endpoint = endpoint_for(server.address)
    await scrapers(path="/metrics").scrape_once(endpoint)
    assert "HTTP 404" in (endpoint.last_scrape_error or "")
    await scrapers(path="/stats/prometheus").scrape_once(endpoint)
    assert endpoint.metrics.running_requests == 3
    assert endpoint.scrape_failures == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("setup", "error"),
    [
        (lambda s: setattr(s, "status", 500), "HTTP 500 Internal Server Error"),
        (lambda s: setattr(s, "body", "<html>not metrics</html>"), "no known engine metrics found"),
        (
            lambda s: setattr(s, "body", "vllm:num_requests_running{oops 1\n"),
            "line 1: vllm:num_requests_running: ",
        ),
        (
            lambda s: setattr(s, "body", "vllm:num_requests_running 1\n"),
            "metric vllm:num_requests_waiting not found",
        ),
        (lambda s: setattr(s, "hang", True), "timed out after 0.2s"),
    ],
    ids=["http-500", "garbage", "malformed-wanted-line", "missing-metric", "timeout"],
)
async def test_failure_counts_and_keeps_old_metrics(
    model_server: Any,
    scrapers: Any,
    clock: Any,
    setup: Callable[[Any], None],
    error: str,
) -> None:
    scraper = scrapers(clock=clock, timeout_s=0.2)
    endpoint = endpoint_for(model_server.address)
    await scraper.scrape_once(endpoint)
    good = endpoint.metrics
    assert good.updated_at == 1000.0

    setup(model_server)
    clock.now = 1001.0
    await scraper.scrape_once(endpoint)
    await scraper.scrape_once(endpoint)
    assert endpoint.metrics is good
    assert endpoint.scrape_failures == 2
    assert error in (endpoint.last_scrape_error or "")


@pytest.mark.asyncio
async def test_connection_refused(scrapers: Any, closed_port_address: str) -> None:
    endpoint = endpoint_for(closed_port_address)
    await scrapers().scrape_once(endpoint)
    assert endpoint.scrape_failures == 1
    assert endpoint.metrics.updated_at == 0.0
    assert not endpoint.is_fresh(2.0)
    error = endpoint.last_scrape_error or ""
    assert f"GET http://{closed_port_address}/metrics: connect: ConnectionRefusedError" in error


@pytest.mark.asyncio
async def test_staleness_and_recovery(
    model_server: Any,
    scrapers: Any,
    clock: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    scraper = scrapers(clock=clock)
    endpoint = endpoint_for(model_server.address)

    await scraper.scrape_once(endpoint)  # at 1000.0
    assert endpoint.is_fresh(2.0, now=1000.5)

    model_server.status = 503
    for now in (1000.5, 1001.0, 1001.5, 1002.0):
        clock.now = now
        await scraper.scrape_once(endpoint)
    assert endpoint.scrape_failures == 4
    assert endpoint.metrics.updated_at == 1000.0
    assert endpoint.is_fresh(2.0, now=1001.9)
    assert not endpoint.is_fresh(2.0, now=1002.1)

    model_server.status = 500  # a different error: logged again
    await scraper.scrape_once(endpoint)
    assert endpoint.scrape_failures == 5

    model_server.status = 200
    clock.now = 1003.0
    await scraper.scrape_once(endpoint)
    assert endpoint.scrape_failures == 0
    assert endpoint.scrape_errors_total == 5  # the running total survives a recovery
    assert endpoint.last_scrape_error is None
    assert endpoint.metrics.updated_at == 1003.0
    assert endpoint.is_fresh(2.0, now=1003.5)

    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    warnings = [m for level, m in records if level == logging.WARNING]
    assert len(warnings) == 2, warnings  # one per distinct error, not one per failure
    assert f"scrape of {model_server.address} failed (1 in a row, metrics 0.5s old)" in warnings[0]
    assert "HTTP 503" in warnings[0] and "HTTP 500" in warnings[1]
    infos = [m for level, m in records if level == logging.INFO]
    assert f"first scrape of {model_server.address}: vllm metrics" in infos
    assert any(
        m.startswith(f"scrape of {model_server.address} recovered after 5 failures") for m in infos
    )


@pytest.mark.asyncio
async def test_start_scrapes_existing_endpoints_before_returning(
    make_server: Any,
    scrapers: Any,
    ticker: Any,
    payloads: dict[str, str],
) -> None:
    vllm, sglang = await make_server(), await make_server()
    sglang.body = payloads["sglang"]
    store = EndpointStore()
    store.replace([(vllm.address, None), (sglang.address, frozenset({"m"}))])
    scraper = scrapers(store, sleep=ticker.sleep)
    await scraper.start()
    assert store.get(vllm.address).metrics.running_requests == 3  # type: ignore[union-attr]
    assert store.get(sglang.address).metrics.running_requests == 8  # type: ignore[union-attr]
    assert scraper.scraped_addresses() == {vllm.address, sglang.address}
    with pytest.raises(RuntimeError):
        await scraper.start()


@pytest.mark.asyncio
async def test_tasks_follow_the_store(
    make_server: Any,
    scrapers: Any,
    ticker: Any,
    wait_until: Any,
) -> None:
    a, b = await make_server(), await make_server()
    store = EndpointStore()
    store.replace([(a.address, None)])
    scraper = scrapers(store, sleep=ticker.sleep, interval_s=0.05)
    await scraper.start()
    assert a.requests == 1
    await wait_until(lambda: ticker.sleeping == 1, "a's task to sleep")
    assert ticker.delays == [0.05]  # started after the initial scrape: waits one interval

    ticker.tick()
    await wait_until(lambda: a.requests == 2 and ticker.sleeping == 1, "a's second poll")

    store.replace([(a.address, None), (b.address, None)])  # b added: scraped at once
    assert scraper.scraped_addresses() == {a.address, b.address}
    await wait_until(lambda: b.requests == 1 and ticker.sleeping == 2, "b's first poll")
    assert store.get(b.address).metrics.running_requests == 3  # type: ignore[union-attr]

    store.replace([(b.address, None)])  # a removed: its task is cancelled
    assert scraper.scraped_addresses() == {b.address}
    ticker.tick()
    await wait_until(lambda: b.requests == 2 and ticker.sleeping == 1, "b's second poll")
    assert a.requests == 2

    await scraper.stop()
    assert scraper.scraped_addresses() == frozenset()
    store.replace([(a.address, None), (b.address, None)])  # a stopped scraper ignores it
    assert scraper.scraped_addresses() == frozenset()


@pytest.mark.asyncio
async def test_store_changed_from_another_thread(
    model_server: Any,
    scrapers: Any,
    ticker: Any,
    wait_until: Any,
) -> None:
    store = EndpointStore()
    scraper = scrapers(store, sleep=ticker.sleep)
    await scraper.start()
    await asyncio.to_thread(store.replace, [(model_server.address, None)])
    await wait_until(lambda: model_server.requests == 1, "the first poll")
    assert scraper.scraped_addresses() == {model_server.address}


@pytest.mark.asyncio
async def test_loop_keeps_polling_through_failures(
    model_server: Any,
    scrapers: Any,
    ticker: Any,
    wait_until: Any,
) -> None:
    store = EndpointStore()
    scraper = scrapers(store, sleep=ticker.sleep)
    await scraper.start()
    model_server.status = 500
    store.replace([(model_server.address, None)])
    endpoint = store.get(model_server.address)
    assert endpoint is not None
    await wait_until(lambda: endpoint.scrape_failures == 1 and ticker.sleeping == 1, "a failure")
    ticker.tick()
    await wait_until(lambda: endpoint.scrape_failures == 2 and ticker.sleeping == 1, "another")
    model_server.status = 200
    ticker.tick()
    await wait_until(lambda: endpoint.scrape_failures == 0, "recovery")
    assert endpoint.metrics.running_requests == 3


@pytest.mark.asyncio
async def test_a_bug_is_counted_not_fatal(
    model_server: Any,
    scrapers: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_clock() -> float:
        raise RuntimeError("clock broke")

    endpoint = endpoint_for(model_server.address)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await scrapers(clock=broken_clock).scrape_once(endpoint)
    assert endpoint.scrape_failures == 1
    assert "internal error: RuntimeError('clock broke')" in (endpoint.last_scrape_error or "")
    assert caplog.records[-1].exc_info is not None


@pytest.mark.asyncio
async def test_stop_closes_its_client_and_is_idempotent(model_server: Any) -> None:
    scraper = MetricsScraper(EndpointStore())
    endpoint = endpoint_for(model_server.address)
    await scraper.scrape_once(endpoint)
    client = scraper._client
    assert client is not None and not client.closed
    await scraper.stop()
    assert client.closed
    await scraper.stop()
    await scraper.scrape_once(endpoint)  # after stop: a recorded failure, no new client
    assert endpoint.last_scrape_error == "scraper is stopped"
    assert scraper._client is None


@pytest.mark.parametrize(
    ("interval_s", "timeout_s"),
    [(0.05, 0.5), (0.5, 0.5), (0.8, 0.8), (5.0, 1.0)],
)
def test_default_timeout(interval_s: float, timeout_s: float) -> None:
    assert default_timeout_s(interval_s) == timeout_s
    assert MetricsScraper(EndpointStore(), interval_s=interval_s).timeout_s == timeout_s


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval_s": 0}, "interval_s must be > 0"),
        ({"timeout_s": -1}, "timeout_s must be > 0"),
        ({"path": "metrics"}, "path must start with '/'"),
        ({"engine": "trtllm"}, "unknown model-server engine"),
    ],
    ids=["interval", "timeout", "path", "engine"],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MetricsScraper(EndpointStore(), **kwargs)


@pytest.mark.asyncio
async def test_an_unchanged_page_gives_the_same_metrics_at_the_new_time(
    model_server: Any, scrapers: Any, clock: Any
) -> None:
    scraper = scrapers(clock=clock)
    endpoint = endpoint_for(model_server.address)
    await scraper.scrape_once(endpoint)
    first = endpoint.metrics
    clock.now = 1001.0
    await scraper.scrape_once(endpoint)  # the same bytes: not parsed again
    assert endpoint.metrics == Metrics(5, 3, 0.25, 16, 27000, models=M, updated_at=1001.0)
    model_server.body = model_server.body.replace("} 5.0", "} 7.0")
    clock.now = 1002.0
    await scraper.scrape_once(endpoint)
    assert endpoint.metrics.waiting_requests == 7 and endpoint.metrics.updated_at == 1002.0
    assert first.updated_at == 1000.0


@pytest.mark.asyncio
async def test_an_unchanged_page_keeps_its_lora_adapters(
    model_server: Any, scrapers: Any, clock: Any
) -> None:
    model_server.body += (
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="sql",'
        'waiting_lora_adapters="chat"} 1700000000.0\n'
    )
    scraper = scrapers(clock=clock)
    endpoint = endpoint_for(model_server.address)
    await scraper.scrape_once(endpoint)
    first = endpoint.metrics
    assert first.lora_running == frozenset({"sql"})
    clock.now = 1001.0
    await scraper.scrape_once(endpoint)  # the same bytes: the last Metrics, restamped
    assert endpoint.metrics == replace(first, updated_at=1001.0)
    assert endpoint.served_models() == frozenset({"m", "sql", "chat"})


@pytest.mark.asyncio
async def test_polls_of_endpoints_known_together_are_spread_over_the_interval(
    make_server: Any, scrapers: Any, ticker: Any, wait_until: Any
) -> None:
    servers = [await make_server() for _ in range(4)]
    store = EndpointStore()
    store.replace([(server.address, None) for server in servers])
    scraper = scrapers(store, sleep=ticker.sleep, interval_s=0.05)
    await scraper.start()
    await wait_until(lambda: ticker.sleeping == 4, "every task to sleep")
    # Not four polls at once every 50 ms: one every 12.5 ms.
    assert sorted(ticker.delays) == pytest.approx([0.0125, 0.025, 0.0375, 0.05])
