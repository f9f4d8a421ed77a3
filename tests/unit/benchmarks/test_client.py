"""The load generator against an in-process SSE server (in a thread, on its own loop)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from benchmarks.routing.client import RequestResult, _has_content, _read_usage, run_load


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body.get("model") == "refuse":
        return web.json_response({"error": "no"}, status=503)
    if body.get("model") == "hang":
        await asyncio.sleep(3600)
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", "x-sim-pod": "p1"})
    await resp.prepare(request)
    await resp.write(_event({"choices": [{"delta": {"role": "assistant", "content": ""}}]}))
    for i in range(body["max_tokens"]):
        await resp.write(_event({"choices": [{"delta": {"content": f" tok{i}"}}]}))
    await resp.write(
        _event(
            {
                "choices": [],
                "usage": {
                    "prompt_tokens": 12,
                    "completion_tokens": body["max_tokens"],
                    "prompt_tokens_details": {"cached_tokens": 8},
                },
            }
        )
    )
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", _chat)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]
        ready.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True
    )
    thread.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{holder['port']}"
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def _body(model: str = "m", tokens: int = 5) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": tokens,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_streams_are_timed_and_usage_is_read(server: str) -> None:
    load = run_load(server, [(0.0, _body(tokens=5)), (0.01, _body(tokens=300))], time_limit_s=30)
    assert [r.error for r in load.results] == [None, None]
    for result, tokens in zip(load.results, (5, 300), strict=True):
        assert result.status == 200
        assert result.output_tokens == tokens
        assert (result.prompt_tokens, result.cached_tokens) == (12, 8)
        assert result.pod == "p1"
        assert result.ttft_s is not None and result.e2e_s is not None
        assert 0 <= result.ttft_s <= result.e2e_s
    assert load.timed_out == 0 and load.client_cpu_s > 0


def test_http_errors_are_recorded(server: str) -> None:
    (result,) = run_load(server, [(0.0, _body(model="refuse"))], time_limit_s=30).results
    assert (result.status, result.error, result.ok) == (503, "http 503", False)


def test_the_time_limit_cancels_what_is_still_running(server: str) -> None:
    load = run_load(server, [(0.0, _body(model="hang")), (0.0, _body())], time_limit_s=0.5)
    assert [r.error for r in load.results] == ["timeout", None]
    assert load.timed_out == 1


def test_requests_scheduled_after_the_time_limit_are_not_sent(server: str) -> None:
    load = run_load(server, [(0.0, _body()), (5.0, _body())], time_limit_s=0.3)
    assert [r.error for r in load.results] == [None, "timeout"]
    assert load.results[1].status is None


def test_connection_errors_are_recorded() -> None:
    (result,) = run_load("http://127.0.0.1:9", [(0.0, _body())], time_limit_s=10).results
    assert result.error is not None and result.status is None


def test_sse_parsing_helpers() -> None:
    assert not _has_content(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}')
    assert _has_content(b'data: {"choices":[{"delta":{"content":"x"}}]}')
    assert _has_content(b'data: {"choices":[{"text":"x"}]}')  # /v1/completions shape
    assert not _has_content(b"data: [DONE]")
    result = RequestResult(index=0, scheduled_s=0.0)
    _read_usage(
        b'ata: {"trunc\n\ndata: {"usage":{"completion_tokens":3}}\n\ndata: [DONE]\n\n', result
    )
    assert result.output_tokens == 3
