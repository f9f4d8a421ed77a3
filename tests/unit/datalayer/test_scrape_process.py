"""ProcessScraper: a real scraper process polling real HTTP servers on 127.0.0.1, its
results applied to this process's endpoint table. No timing assertions: waits are hang
guards, and "no longer polled" is judged against polls of another pod."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from epp.datalayer import scrape_wire as wire
from epp.datalayer import scrape_worker
from epp.datalayer.endpoint import Metrics
from epp.datalayer.scrape_process import _STATES_PER_TURN, DEFAULT_NICE, ProcessScraper, _Child
from epp.datalayer.store import EndpointStore

MakeScraper = Callable[..., ProcessScraper]


@pytest_asyncio.fixture
async def process_scrapers() -> AsyncIterator[MakeScraper]:
    made: list[ProcessScraper] = []

    def make(store: EndpointStore, **kwargs: Any) -> ProcessScraper:
        scraper = ProcessScraper(store, **kwargs)
        made.append(scraper)
        return scraper

    yield make
    for scraper in made:
        await scraper.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state. It may be reaped in between,
    # and then reading its /proc entry fails (ESRCH or ENOENT).
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.asyncio
async def test_updates_cross_to_the_routing_side(
    make_server: Any,
    process_scrapers: MakeScraper,
    payloads: dict[str, str],
    wait_until: Any,
) -> None:
    vllm, sglang = await make_server(), await make_server()
    sglang.body = payloads["sglang"]
    store = EndpointStore()
    store.replace([(vllm.address, None), (sglang.address, frozenset({"m"}))])
    scraper = process_scrapers(store, interval_s=0.02)
    await scraper.start()
    # start() returns once every endpoint was scraped once, as the in-loop scraper's.
    a, b = store.get(vllm.address), store.get(sglang.address)
    assert a is not None and b is not None
    assert (a.metrics.waiting_requests, a.metrics.running_requests) == (5, 3)
    assert (b.metrics.kv_block_size, b.metrics.kv_num_blocks) == (1, 120000)
    assert a.scrape_failures == 0 and a.last_scrape_error is None
    assert scraper.scraped_addresses() == {vllm.address, sglang.address}
    assert scraper.running and scraper.pid is not None and scraper.pid != os.getpid()
    # Scraping yields the CPU to routing (see DEFAULT_NICE).
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, scraper.pid) == min(19, ours + DEFAULT_NICE)

    first = a.metrics
    vllm.body = payloads["vllm"].replace("} 5.0", "} 9.0")
    await wait_until(lambda: a.metrics.waiting_requests == 9, "the new number")
    assert a.metrics is not first  # replaced whole, never changed in place
    assert a.metrics.updated_at > first.updated_at
    await wait_until(lambda: scraper.polls_total >= 4, "polls counted")

    c = await make_server()
    store.replace([(vllm.address, None), (sglang.address, None), (c.address, None)])
    added = store.get(c.address)
    assert added is not None
    await wait_until(lambda: added.metrics.updated_at > 0, "the added endpoint's first scrape")


@pytest.mark.asyncio
async def test_failures_and_their_logs_cross(
    model_server: Any,
    process_scrapers: MakeScraper,
    wait_until: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = EndpointStore()
    store.replace([(model_server.address, None)])
    endpoint = store.get(model_server.address)
    assert endpoint is not None
    with caplog.at_level(logging.INFO, logger="epp.datalayer"):
        scraper = process_scrapers(store, interval_s=0.02)
        await scraper.start()
        good = endpoint.metrics
        model_server.status = 500
        await wait_until(lambda: endpoint.scrape_failures >= 2, "two failures")
        assert "HTTP 500 Internal Server Error" in (endpoint.last_scrape_error or "")
        assert endpoint.metrics == good  # the old metrics stay, and age
        model_server.status = 200
        await wait_until(lambda: endpoint.scrape_failures == 0, "recovery")
        await wait_until(
            lambda: any("recovered" in r.getMessage() for r in caplog.records), "the log"
        )
    assert endpoint.last_scrape_error is None
    assert endpoint.scrape_errors_total >= 2
    # The child's lines reach this process's handlers under the scraper's logger, once.
    failed = [
        r
        for r in caplog.records
        if r.name == "epp.datalayer.scraper" and "failed" in r.getMessage()
    ]
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING
    assert f"scrape of {model_server.address} failed (1 in a row" in failed[0].getMessage()


@pytest.mark.asyncio
async def test_a_removed_endpoint_is_no_longer_polled(
    make_server: Any, process_scrapers: MakeScraper, wait_until: Any
) -> None:
    kept, removed = await make_server(), await make_server()
    store = EndpointStore()
    store.replace([(kept.address, None), (removed.address, None)])
    scraper = process_scrapers(store, interval_s=0.01, max_idle_interval_s=0.01)
    await scraper.start()
    await wait_until(lambda: removed.requests >= 3, "polls of the pod to remove")
    gone = store.get(removed.address)
    assert gone is not None
    store.replace([(kept.address, None)])
    assert scraper.scraped_addresses() == {kept.address}
    seen, kept_seen = removed.requests, kept.requests
    # Twenty polls of the other pod: the removal has long reached the child.
    await wait_until(lambda: kept.requests >= kept_seen + 20, "polls of the kept pod")
    assert removed.requests <= seen + 1  # at most the one under way
    stamp = gone.metrics.updated_at
    await wait_until(lambda: kept.requests >= kept_seen + 25, "more polls")
    assert gone.metrics.updated_at == stamp  # late results for it are dropped


@pytest.mark.asyncio
async def test_a_killed_scraper_is_noticed_and_restarted(
    model_server: Any,
    process_scrapers: MakeScraper,
    wait_until: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = EndpointStore()
    store.replace([(model_server.address, None)])
    endpoint = store.get(model_server.address)
    assert endpoint is not None
    scraper = process_scrapers(store, interval_s=0.02)
    await scraper.start()
    model_server.status = 500
    await wait_until(lambda: endpoint.scrape_failures >= 1, "a failure")
    errors = endpoint.scrape_errors_total
    first_pid = scraper.pid
    assert first_pid is not None
    with caplog.at_level(logging.ERROR, logger="epp.datalayer.scrape_process"):
        os.kill(first_pid, signal.SIGKILL)
        await wait_until(lambda: scraper.restarts_total == 1, "the failure noticed")
        await wait_until(lambda: scraper.pid not in (None, first_pid), "a new scraper process")
    assert not _alive(first_pid)
    message = caplog.records[-1].getMessage()
    assert f"scraper process {first_pid} failed" in message
    assert "exit status -9" in message
    # The new child goes on from the state the old one left: counts keep growing.
    await wait_until(lambda: endpoint.scrape_errors_total > errors + 1, "failures counted on")
    model_server.status = 200
    before = endpoint.metrics.updated_at
    await wait_until(lambda: endpoint.metrics.updated_at > before, "fresh metrics again")
    assert endpoint.scrape_failures == 0
    await wait_until(lambda: scraper.running, "the new child talking")


@pytest.mark.asyncio
async def test_a_hung_scraper_is_killed_and_restarted(
    model_server: Any, process_scrapers: MakeScraper, wait_until: Any
) -> None:
    store = EndpointStore()
    store.replace([(model_server.address, None)])
    scraper = process_scrapers(store, interval_s=0.02, hang_timeout_s=0.5)
    await scraper.start()
    hung = scraper.pid
    assert hung is not None
    os.kill(hung, signal.SIGSTOP)  # alive, but silent
    try:
        await wait_until(lambda: scraper.restarts_total == 1, "the silence noticed")
        await wait_until(lambda: not _alive(hung), "the hung child killed")
    finally:
        if _alive(hung):
            os.kill(hung, signal.SIGKILL)
    endpoint = store.get(model_server.address)
    assert endpoint is not None
    stamp = endpoint.metrics.updated_at
    await wait_until(lambda: endpoint.metrics.updated_at > stamp, "scrapes from the new child")


@pytest.mark.asyncio
async def test_stop_ends_the_child_and_is_idempotent(
    model_server: Any, process_scrapers: MakeScraper
) -> None:
    store = EndpointStore()
    store.replace([(model_server.address, None)])
    scraper = process_scrapers(store)
    await scraper.start()
    pid = scraper.pid
    assert pid is not None and _alive(pid)
    await scraper.stop()
    assert not _alive(pid)
    assert not scraper.running
    assert scraper.restarts_total == 0  # a stop is no failure
    assert scraper.scraped_addresses() == frozenset()
    store.replace([])  # a stopped scraper ignores the store
    await scraper.stop()
    with pytest.raises(RuntimeError):
        await scraper.start()


@pytest.mark.asyncio
async def test_an_idle_pod_epp_sends_work_to_is_polled_at_once(
    make_server: Any, process_scrapers: MakeScraper, wait_until: Any
) -> None:
    pod = await make_server()
    pod.body = (
        'vllm:num_requests_running{model_name="m"} 0.0\n'
        'vllm:num_requests_waiting{model_name="m"} 0.0\n'
        'vllm:kv_cache_usage_perc{model_name="m"} 0.0\n'
    )
    store = EndpointStore()
    store.replace([(pod.address, None)])
    endpoint = store.get(pod.address)
    assert endpoint is not None
    # Idle polls 5, 5, 10, ... ms apart, then one a minute: only work brings one sooner.
    scraper = process_scrapers(store, interval_s=0.005, max_idle_interval_s=60.0)
    await scraper.start()
    await wait_until(lambda: pod.requests >= 8, "the idle back-off")
    seen = pod.requests
    endpoint.request_routed()
    await wait_until(lambda: pod.requests > seen + 3, "polls at the base pace")
    endpoint.request_finished()


@pytest.mark.asyncio
async def test_the_child_exits_when_epp_goes() -> None:
    ours, theirs = socket.socketpair()
    config = {
        "engine": "auto",
        "path": "/metrics",
        "interval_s": 0.05,
        "timeout_s": 0.5,
        "max_body_bytes": 0,
        "max_samples": 0,
        "max_backoff_s": 1.0,
        "max_idle_interval_s": 0.1,
        "stop_timeout_s": 1.0,
        "filter_names": True,
        "log_level": logging.INFO,
        "nice": 0,
    }
    child = await asyncio.to_thread(
        subprocess.Popen,
        [
            sys.executable,
            "-m",
            "epp.datalayer.scrape_worker",
            str(theirs.fileno()),
            json.dumps(config),
        ],
        pass_fds=(theirs.fileno(),),
    )
    theirs.close()
    ours.sendall(wire.frame(wire.START))
    ours.setblocking(False)
    buffer = wire.FrameBuffer()
    kinds: list[int] = []
    while wire.STARTED not in kinds:
        data = await asyncio.get_running_loop().sock_recv(ours, 4096)
        assert data, "the child closed before it started"
        buffer.feed(data)
        kinds.extend(kind for kind, _ in buffer.frames())
    ours.close()  # what the kernel does when epp dies
    code = await asyncio.to_thread(child.wait, 10)
    assert code == 0


@pytest.mark.asyncio
async def test_a_backlog_of_states_is_applied_a_slice_per_loop_turn() -> None:
    """However many states arrive at once, each loop turn applies at most a slice, so a
    routing decision waits for one slice at most."""
    store = EndpointStore()
    store.replace([(f"10.0.0.{i}:8000", None) for i in range(1, 101)])
    endpoints = store.all()
    scraper = ProcessScraper(store)
    ids = [scraper._assign(endpoint) for endpoint in endpoints]  # as start() does
    child = _Child(scraper, process=None, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    states = [wire.EndpointState(id_, 0, 0, 7, 1, 0.5, 16, 100, 5.0, None) for id_ in ids]
    child.data_received(
        b"".join(
            wire.frame(wire.STATES, wire.encode_states(states[at : at + _STATES_PER_TURN]))
            for at in range(0, len(states), _STATES_PER_TURN)
        )
        + wire.frame(wire.STATS, wire.encode_stats(3))
    )

    def applied() -> int:
        return sum(endpoint.metrics.updated_at == 5.0 for endpoint in endpoints)

    seen = [applied()]
    while child.polls != 3 and len(seen) < 50:
        await asyncio.sleep(0)
        seen.append(applied())
    assert seen[0] == _STATES_PER_TURN < len(states)
    assert all(0 <= b - a <= _STATES_PER_TURN for a, b in itertools.pairwise(seen))
    assert seen[-1] == len(states) and child.polls == 3
    assert all(endpoint.metrics.waiting_requests == 7 for endpoint in endpoints)


@pytest.mark.asyncio
async def test_the_child_sends_states_in_frames_of_a_slice() -> None:
    """The scraper process cuts a flush into frames epp applies one per loop turn."""
    worker = scrape_worker._Worker(ProcessScraper(EndpointStore())._config)
    worker.handle(
        wire.ADD,
        wire.encode_add(
            [
                (
                    wire.EndpointState(id_, 0, 0, 0, 0, 0.0, None, None, 0.0, None),
                    f"10.0.1.{id_}:80",
                )
                for id_ in range(1, 101)
            ]
        ),
    )
    sent: list[bytes] = []
    worker.channel.send = sent.append  # type: ignore[method-assign,assignment]
    for endpoint in worker._store.all():
        endpoint.metrics = Metrics(waiting_requests=2, updated_at=4.0)
        worker._dirty.add(endpoint)
    worker.flush()
    frames = wire.FrameBuffer()
    frames.feed(b"".join(sent))
    states = [wire.decode_states(body)[0] for kind, body in frames.frames() if kind == wire.STATES]
    assert max(map(len, states)) == _STATES_PER_TURN
    got = [state for frame in states for state in frame]
    assert sorted(state.id for state in got) == list(range(1, 101))
    assert {(state.waiting_requests, state.updated_at) for state in got} == {(2, 4.0)}
