"""Two replicas sharing their decisions through a real redis-server: a prefix one routes
is found by the other, in-flight load crosses over and leaves with its replica, and a
replica that loses Redis keeps routing and comes back."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from epp.director import Director
from epp.routing import RoutingDecision
from epp.scheduling.scorers.prefix_cache import PrefixCacheScorer
from epp.sync.redis_sync import RedisSync
from tests.redis_server import RedisServer
from tests.unit.directors import POD_A, POD_B, POD_C, POD_D, director_over, fresh_store
from tests.unit.k8s.conftest import eventually

PODS = {POD_A: ["m"], POD_B: ["m"], POD_C: ["m"], POD_D: ["m"]}
PROMPT = "You are a helpful travel agent. " * 40


class Replica:
    def __init__(self, name: str, url: str) -> None:
        self.store = fresh_store(PODS)
        self.director: Director = director_over(self.store)
        self.sync = RedisSync(
            url, self.store, replica_id=name, heartbeat_s=0.1, expire_s=0.6, timeout_s=0.5
        )
        self.store.subscribe(self.sync.endpoints_changed)
        self.director.share_load(self.sync)

    def route(self, content: str) -> RoutingDecision:
        body = b'{"model": "m", "messages": [{"role": "user", "content": "%s"}]}' % (
            content.encode()
        )
        return self.director.route_body(body, request_id="r", headers={})

    def inflight(self, address: str) -> int:
        endpoint = self.store.get(address)
        assert endpoint is not None
        return endpoint.inflight_requests

    def prefix_scorer(self) -> PrefixCacheScorer:
        (scorer,) = [p for p in self.director.scheduler.plugins if isinstance(p, PrefixCacheScorer)]
        return scorer


@pytest_asyncio.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[tuple[Replica, Replica]]:
    a, b = Replica("replica-a", redis_server.url), Replica("replica-b", redis_server.url)
    await a.sync.start()
    await b.sync.start()
    await eventually(lambda: a.sync.connected and b.sync.connected)
    # Each has heard the other's heartbeat: both subscriptions are live.
    await eventually(lambda: a.sync.remote.replicas() == ["replica-b"])
    await eventually(lambda: b.sync.remote.replicas() == ["replica-a"])
    yield a, b
    await a.sync.stop()
    await b.sync.stop()


@pytest.mark.asyncio
async def test_a_prefix_routed_by_one_replica_is_found_by_the_other(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    first = a.route(PROMPT + "first question")
    a.director.finish(first)
    chosen = first.endpoints[0]
    target = b.store.get(chosen.address)
    assert target is not None
    # A inserts (and publishes) the pick on its loop's next turn.
    await eventually(lambda: bool(a.prefix_scorer().index.hashes_of(chosen)))
    hashes = a.prefix_scorer().index.hashes_of(chosen)
    await eventually(lambda: b.prefix_scorer().index.hashes_of(target) == hashes)
    # B sends the same conversation where A sent it, though it never saw it itself.
    for _ in range(5):
        again = b.route(PROMPT + "second question")
        assert again.endpoints[0].address == chosen.address
        b.director.finish(again)


@pytest.mark.asyncio
async def test_inflight_load_crosses_over_and_expires_with_its_replica(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    # Three conversations of 20 requests each, each kept on its pod by its prefix.
    held = [a.route(f"question {i} " * 30) for i in range(3) for _ in range(20)]
    by_pod: dict[str, int] = {}
    for decision in held:
        by_pod[decision.destination] = by_pod.get(decision.destination, 0) + 1
    assert sorted(by_pod.values()) == [20, 20, 20]
    await eventually(lambda: all(b.inflight(pod) == n for pod, n in by_pod.items()))
    # A request from B now avoids the pods A loaded: it sees the pool's load, not half.
    spread = b.route("unrelated " * 30)
    assert spread.destination not in by_pod
    b.director.finish(spread)
    # A's finishes reach B as well.
    a.director.finish(held[0])
    await eventually(lambda: sum(b.inflight(pod) for pod in by_pod) == 59)
    # A vanishes without a goodbye (kill -9): B drops its counts once it goes quiet.
    await a.sync.stop(goodbye=False)
    await eventually(lambda: b.sync.remote.replicas() == [])
    assert all(b.inflight(pod) == 0 for pod in PODS)


@pytest.mark.asyncio
async def test_a_replica_that_stops_cleanly_is_forgotten_at_once(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    decision = a.route("hello " * 30)
    await eventually(lambda: b.inflight(decision.destination) == 1)
    await a.sync.stop()
    await eventually(lambda: b.inflight(decision.destination) == 0)
    assert b.sync.remote.replicas() == []


@pytest.mark.asyncio
async def test_losing_redis_keeps_routing_and_reconnects(
    pair: tuple[Replica, Replica],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = pair
    caplog.set_level(logging.WARNING, logger="epp.sync.redis_sync")
    redis_server.kill()
    await eventually(lambda: not a.sync.connected and not b.sync.connected)
    assert any("Redis unreachable" in r.getMessage() for r in caplog.records)
    assert a.sync.stats.disconnects == 1
    # Routing goes on, on each replica's own view.
    decision = a.route(PROMPT + "while Redis is down")
    assert decision.destination in PODS
    a.director.finish(decision)
    redis_server.start()  # same port: the replicas find it again
    await eventually(lambda: a.sync.connected and b.sync.connected, timeout_s=20)
    await eventually(lambda: b.sync.remote.replicas() == ["replica-a"])
    after = a.route("after the outage " * 30)
    await eventually(lambda: b.inflight(after.destination) == 1)
    a.director.finish(after)
