"""Injected faults: a pod that answers 5xx, or reports a longer queue than it has."""

from __future__ import annotations

import pytest

from vllm_sim.faults import Faults

from .helpers import chat_body, metric_value, serve


@pytest.mark.asyncio
async def test_an_injected_status_answers_inference_requests_only() -> None:
    async with serve() as (pod, session):
        async with session.post("/sim/faults", json={"status": 503}) as r:
            assert await r.json() == {"status": 503, "extra_waiting": 0}
        async with session.post("/v1/chat/completions", json=chat_body("hi")) as r:
            assert r.status == 503
            assert r.headers["x-sim-pod"] == pod.address
            assert "injected" in (await r.json())["error"]["message"]
        async with session.get("/health") as r:
            assert r.status == 200
        async with session.get("/v1/models") as r:
            assert r.status == 200
        async with session.delete("/sim/faults") as r:
            assert (await r.json())["status"] is None
        async with session.post("/v1/chat/completions", json=chat_body("hi")) as r:
            assert r.status == 200


@pytest.mark.asyncio
async def test_extra_waiting_is_added_to_the_reported_queue() -> None:
    async with serve() as (_, session):
        async with session.post("/sim/faults", json={"extra_waiting": 7}) as r:
            assert r.status == 200
        async with session.get("/metrics") as r:
            assert metric_value(await r.text(), "vllm:num_requests_waiting") == 7
        async with session.post("/sim/faults", json={"status": 500}) as r:
            assert await r.json() == {"status": 500, "extra_waiting": 7}  # the rest is kept


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"status": 200},
        {"status": True},
        {"extra_waiting": -1},
        {"latency": 5},
    ],
    ids=["not-an-object", "not-an-error", "bool-status", "negative-queue", "unknown-key"],
)
def test_bad_faults_are_refused_whole(document: object) -> None:
    faults = Faults(status=503, extra_waiting=2)
    with pytest.raises(ValueError):
        faults.update(document)
    assert (faults.status, faults.extra_waiting) == (503, 2)


@pytest.mark.asyncio
async def test_a_bad_request_to_the_fault_route_is_a_400() -> None:
    async with serve() as (_, session):
        async with session.post("/sim/faults", data=b"{") as r:
            assert r.status == 400
