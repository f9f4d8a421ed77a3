"""The simulator's Responses API (``POST /v1/responses``), plain and streamed."""

from __future__ import annotations

import json

import pytest

from .helpers import serve


def _events(text: str) -> list[tuple[str, dict[str, object]]]:
    events = []
    for block in text.strip().split("\n\n"):
        kind, data = block.split("\n")
        assert kind.startswith("event: ") and data.startswith("data: ")
        events.append((kind[7:], json.loads(data[6:])))
    return events


@pytest.mark.asyncio
async def test_plain_response_reports_usage_in_input_output_tokens() -> None:
    payload = {"model": "m", "instructions": "abcd", "input": "efghijkl", "max_output_tokens": 3}
    async with serve() as (_, session):
        async with session.post("/v1/responses", json=payload) as r:
            assert r.status == 200
            body = await r.json()
    assert body["object"] == "response" and body["status"] == "incomplete"
    assert body["output"][0]["content"][0]["text"] == "tok0 tok1 tok2"
    assert body["usage"]["input_tokens"] == 3  # 12 bytes, 4 per token
    assert body["usage"]["output_tokens"] == 3
    assert body["usage"]["input_tokens_details"] == {"cached_tokens": 0}


@pytest.mark.asyncio
async def test_streamed_response_events_end_with_completed_and_usage() -> None:
    payload = {
        "model": "m",
        "input": [{"role": "user", "content": "abcd"}],
        "max_output_tokens": 2,
        "stream": True,
    }
    async with serve() as (_, session):
        async with session.post("/v1/responses", json=payload) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = _events(await r.text())
    kinds = [kind for kind, _ in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    completed = events[-1][1]["response"]
    assert isinstance(completed, dict)
    assert completed["usage"]["output_tokens"] == 2
    assert completed["usage"]["input_tokens"] == 1


@pytest.mark.asyncio
async def test_bad_input_is_400() -> None:
    async with serve() as (_, session):
        async with session.post("/v1/responses", json={"model": "m", "input": 5}) as r:
            assert r.status == 400
