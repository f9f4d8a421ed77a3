"""The scraper's timer-driven polls (no ``sleep`` seam) against real sockets: each poll
sent from a timer on an idle keep-alive connection and its answer applied in the
connection's callback, and the adaptive pace of idle endpoints. No timing assertions:
polls are counted, and margins are several-fold."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.http1_client import ConnectionDropped, Http1Client, Response
from epp.datalayer.scrape_process import ProcessScraper
from epp.datalayer.scraper import MetricsScraper
from epp.datalayer.store import EndpointStore
from tests.unit.datalayer.scripted_pod import (
    BODY,
    OK_HEAD,
    Script,
    ScriptedPod,
    always,
    chunked,
    with_length,
)

IDLE_TEXT = """\
vllm:num_requests_running{engine="0",model_name="m"} 0.0
vllm:num_requests_waiting{engine="0",model_name="m"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.0
"""

Replies = list[tuple[Response | None, BaseException | None]]


async def poll_with_timers(
    pod: ScriptedPod,
    wait_until: Any,
    polls: int = 5,
    kind: type[MetricsScraper] | type[ProcessScraper] = MetricsScraper,
    **kwargs: Any,
) -> Endpoint:
    """Run a timer-driven scraper of ``kind`` over ``pod`` until it answered ``polls``
    requests."""
    store = EndpointStore()
    store.replace([(pod.address, None)])
    endpoint = store.get(pod.address)
    assert endpoint is not None
    scraper = kind(store, interval_s=0.01, **kwargs)
    await scraper.start()
    try:
        await wait_until(lambda: pod.requests >= polls, f"{polls} polls")
        await wait_until(lambda: scraper.polls_total >= polls, "the last answer")
    finally:
        await scraper.stop()
    return endpoint


# -- Http1Client.start_get ------------------------------------------------------------


@pytest.mark.asyncio
async def test_start_get_needs_an_idle_connection(pods: Any, wait_until: Any) -> None:
    pod = await pods(always([with_length()]))
    client = Http1Client(max_body_bytes=None)
    replies: Replies = []
    assert not client.start_get(pod.address, "/metrics", 5.0, lambda *r: replies.append(r))
    assert pod.requests == 0
    await client.get(pod.address, "/metrics", timeout_s=5.0)  # leaves one idle connection
    assert client.start_get(pod.address, "/metrics", 5.0, lambda *r: replies.append(r))
    assert replies == []  # answered from the loop, never from inside start_get
    await wait_until(lambda: len(replies) == 1, "the answer")
    response, error = replies[0]
    assert error is None and response is not None
    assert response.status == 200 and response.body == BODY
    # The connection went back to the pool: the next one goes out on it as well.
    assert client.start_get(pod.address, "/metrics", 5.0, lambda *r: replies.append(r))
    await wait_until(lambda: len(replies) == 2, "the second answer")
    await client.aclose()
    assert pod.connections == 1


@pytest.mark.asyncio
async def test_start_get_reports_a_connection_closed_while_idle(pods: Any, wait_until: Any) -> None:
    pod = await pods(lambda n: ([with_length()], True))  # closes after each answer, silently
    client = Http1Client(max_body_bytes=None)
    await client.get(pod.address, "/metrics", timeout_s=5.0)
    await asyncio.sleep(0.05)  # let the close arrive
    replies: Replies = []
    if client.start_get(pod.address, "/metrics", 5.0, lambda *r: replies.append(r)):
        await wait_until(lambda: len(replies) == 1, "the failure")
        assert isinstance(replies[0][1], ConnectionDropped)
    await client.aclose()


# -- the scraper's timer-driven polls -------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "script",
    [
        always([with_length()]),
        always([chunked(size=7)[i : i + 50] for i in range(0, len(chunked(size=7)), 50)]),
        always([OK_HEAD + b"\r\n" + BODY], close=True),
        always([with_length(head=b"HTTP/1.1 200 OK\r\nConnection: close\r\n")], close=True),
        always([with_length() + b"HTTP/1.1 200 OK\r\n"]),
        lambda n: ([with_length()], True),  # closes while idle: retried on a fresh one
    ],
    ids=[
        "length",
        "chunked-in-pieces",
        "until-close",
        "connection-close",
        "bytes-after-the-body",
        "closed-while-idle",
    ],
)
async def test_timer_polls_land_metrics(
    pods: Any, wait_until: Any, script: Script, scraper_kind: Any
) -> None:
    pod = await pods(script)
    endpoint = await poll_with_timers(pod, wait_until, kind=scraper_kind)
    assert endpoint.scrape_errors_total == 0, endpoint.last_scrape_error
    assert endpoint.metrics.waiting_requests == 5


@pytest.mark.asyncio
async def test_timer_polls_keep_one_connection(
    pods: Any, wait_until: Any, scraper_kind: Any
) -> None:
    pod = await pods(always([with_length()]))
    await poll_with_timers(pod, wait_until, polls=10, kind=scraper_kind)
    assert pod.connections == 1


@pytest.mark.asyncio
async def test_a_timer_poll_times_out_drops_its_connection_and_recovers(
    pods: Any, wait_until: Any, scraper_kind: Any
) -> None:
    # Poll 0 is start()'s; poll 1 (the first from a timer) stalls after its head.
    def script(n: int) -> tuple[list[bytes], bool]:
        if n == 1:
            return [OK_HEAD + b"Content-Length: 5000\r\n\r\n"], False
        return [with_length()], False

    pod = await pods(script)
    endpoint = await poll_with_timers(pod, wait_until, polls=4, kind=scraper_kind, timeout_s=0.2)
    assert endpoint.scrape_errors_total == 1
    assert endpoint.scrape_failures == 0 and endpoint.last_scrape_error is None
    assert pod.connections == 2  # the late answer never reaches the next poll


@pytest.mark.asyncio
async def test_a_failing_pod_gets_an_error_per_poll(
    pods: Any, wait_until: Any, scraper_kind: Any
) -> None:
    pod = await pods(always([with_length(b"nope", head=b"HTTP/1.1 500 Oops\r\n")]))
    endpoint = await poll_with_timers(pod, wait_until, polls=3, kind=scraper_kind)
    assert endpoint.scrape_failures >= 3
    assert "HTTP 500 Oops" in (endpoint.last_scrape_error or "")


@pytest.mark.asyncio
async def test_an_endpoint_removed_mid_poll_is_not_polled_again(pods: Any, wait_until: Any) -> None:
    pod = await pods(always([with_length()]))
    store = EndpointStore()
    store.replace([(pod.address, None)])
    scraper = MetricsScraper(store, interval_s=0.01)
    await scraper.start()
    await wait_until(lambda: pod.requests >= 3, "a few polls")
    store.replace([])
    assert scraper.scraped_addresses() == frozenset()
    seen = pod.requests
    await asyncio.sleep(0.1)  # ten intervals
    await scraper.stop()
    assert pod.requests <= seen + 1  # at most the one already sent


# -- the adaptive pace ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_idle_pod_is_polled_less_often_than_a_busy_one(
    pods: Any, wait_until: Any, scraper_kind: Any
) -> None:
    busy = await pods(always([with_length()]))  # 5 waiting, 3 running
    idle = await pods(always([with_length(IDLE_TEXT.encode())]))
    store = EndpointStore()
    store.replace([(busy.address, None), (idle.address, None)])
    scraper = scraper_kind(store, interval_s=0.01, max_idle_interval_s=0.32)
    await scraper.start()
    await wait_until(lambda: busy.requests >= 60, "60 polls of the busy pod")
    await scraper.stop()
    # Idle: 10, 10, 20, 40, 80, 160, 320, 320 ms apart: about 8 polls in the busy pod's 60.
    assert idle.requests * 3 < busy.requests
    assert store.get(idle.address).metrics.updated_at > 0  # type: ignore[union-attr]


def _next_poll_due(poller: Any) -> float | None:
    """When the poller's next poll is due: its own timer's time (spread polls) or the
    grid's tick it is down for (polls in step); None while a poll is under way."""
    if poller.timer is not None:
        return float(poller.timer.when())
    tick: float | None = poller.tick
    return tick


@pytest.mark.asyncio
@pytest.mark.parametrize("spread", [True, False])
async def test_an_idle_pod_epp_sends_work_to_is_polled_at_once(
    pods: Any, wait_until: Any, spread: bool
) -> None:
    pod = await pods(always([with_length(IDLE_TEXT.encode())]))
    store = EndpointStore()
    store.replace([(pod.address, None)])
    endpoint = store.get(pod.address)
    assert endpoint is not None
    scraper = MetricsScraper(store, interval_s=0.005, max_idle_interval_s=60.0, spread=spread)
    await scraper.start()
    poller = scraper._polls[endpoint]
    # Idle polls 5, 5, 10, 20, 40, 80, 160 ms apart; the next waits 320 ms, then 640 ms.
    await wait_until(
        lambda: poller.idle_polls >= 7 and _next_poll_due(poller) is not None, "back-off"
    )
    due = _next_poll_due(poller)
    assert due is not None
    seen = pod.requests
    endpoint.request_routed()  # what the director does when it routes a request here
    loop = asyncio.get_running_loop()
    await wait_until(lambda: pod.requests > seen, "the wake-up poll")
    woken_at = loop.time()
    await wait_until(lambda: pod.requests > seen + 3, "polls at the base pace")
    await scraper.stop()
    assert woken_at < due  # polled before its slowed-down pace came round
    assert poller.idle_polls == 0


@pytest.mark.asyncio
async def test_the_adaptive_pace_steps_like_the_back_off(
    pods: Any, ticker: Any, clock: Any, wait_until: Any
) -> None:
    pod = await pods(always([with_length(IDLE_TEXT.encode())]))
    delays = {}
    for idle_cap in (0.3, 0.05):
        ticker.delays.clear()
        store = EndpointStore()
        store.replace([(pod.address, None)])
        scraper = MetricsScraper(
            store, interval_s=0.05, max_idle_interval_s=idle_cap, sleep=ticker.sleep, clock=clock
        )
        await scraper.start()
        await wait_until(lambda: ticker.sleeping == 1, "the first sleep")
        for n in range(2, 8):
            ticker.tick()
            await wait_until(
                lambda n=n: len(ticker.delays) == n and ticker.sleeping == 1, f"sleep {n}"
            )
        delays[idle_cap] = list(ticker.delays)
        await scraper.stop()
        ticker.tick()
    # The first sleep is the start's spread; then one per idle poll.
    assert delays[0.3] == [0.05, 0.05, 0.1, 0.2, 0.3, 0.3, 0.3]
    assert delays[0.05] == [0.05] * 7  # the slower pace turned off


@pytest.mark.asyncio
async def test_aligned_polls_share_one_tick(pods: Any, wait_until: Any) -> None:
    """``spread=False`` (the scraper process) polls every endpoint on one grid of ticks,
    round after round; read from the timers' due times, not from a clock. (The routing
    loop's spread polls: test_metrics_scraper.py.)"""
    served = [await pods(always([with_length()])) for _ in range(4)]
    store = EndpointStore()
    store.replace([(pod.address, None) for pod in served])
    scraper = MetricsScraper(store, interval_s=0.05, spread=False)
    await scraper.start()
    try:
        for rounds in (3, 6):
            await wait_until(
                lambda rounds=rounds: all(pod.requests >= rounds for pod in served),
                f"{rounds} polls of each pod",
            )
            await wait_until(
                lambda: all(p.tick is not None for p in scraper._polls.values()),
                "every endpoint waiting for its next poll",
            )
            # One tick, and one timer for it: every poller is due on it.
            dues = {p.tick for p in scraper._polls.values()}
            assert len(dues) == 1
            (due,) = dues
            assert due is not None
            assert list(scraper._tick_timers) == [due]
            assert round(scraper._tick_timers[due].when(), 6) == round(due, 6)
            assert {id(p) for p in scraper._ticks[due]} == {id(p) for p in scraper._polls.values()}
    finally:
        await scraper.stop()
