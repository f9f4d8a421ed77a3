"""Open-loop load generator: streaming chat requests sent at their arrival times.

Each request goes out at its scheduled time whether or not earlier ones have finished
(open loop), so a router that falls behind sees its queue grow instead of the client
slowing down to match it. Per request it records, in wall seconds from the *scheduled*
send time (so time spent waiting for a client slot counts, no coordinated omission):
TTFT (the first SSE event with non-empty content), end-to-end latency, the usage the
server reports in its last event, the HTTP status or the error, and the ``x-sim-pod``
header when the router passes it through.

Kept light on CPU, since it shares two cores with Envoy, epp and the simulated fleet:
bodies are serialized before the run; after the first token the stream is not parsed at
all, only its last few reads are kept to find the usage event at the end; uvloop runs
the loop. Connections: one aiohttp session, keep-alive connections reused across requests
(at most ``max_concurrency`` open), TCP_NODELAY on every connection (aiohttp sets it when
a connection is made; ``_nodelay_check`` makes sure of it on every response).

Bounds: at most ``max_concurrency`` requests in flight (later ones wait for a slot, and
that wait counts in their latency); at ``time_limit_s`` wall seconds after the start every
request still pending is cancelled and counted as ``timeout``, so a melted-down contender
cannot hang the run.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import uvloop

__all__ = ["LoadResult", "RequestResult", "run_load"]

# The usage event comes last, in the last read or two; a few more in case of tiny reads.
_TAIL_CHUNKS = 8
_CHAT_PATH = "/v1/chat/completions"


@dataclass(slots=True)
class RequestResult:
    """What one request did. Times are wall seconds from its scheduled send time."""

    index: int
    scheduled_s: float  # wall seconds from the start of the run
    ttft_s: float | None = None
    e2e_s: float | None = None
    status: int | None = None
    error: str | None = None  # None when the request succeeded
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    pod: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class LoadResult:
    results: list[RequestResult]
    wall_s: float  # from the start to the last completion (or the time limit)
    client_cpu_s: float  # CPU time of this process during the run
    timed_out: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def run_load(
    base_url: str,
    schedule: Sequence[tuple[float, dict[str, Any]]],
    *,
    max_concurrency: int = 256,
    time_limit_s: float = 120.0,
) -> LoadResult:
    """Send ``schedule`` ((wall offset s, chat body), ...) to ``base_url``; block until done.

    Runs its own uvloop event loop, so call it from synchronous code.
    """
    bodies = [(t, orjson.dumps(body)) for t, body in schedule]
    cpu0 = time.process_time()
    results, wall_s, timed_out = uvloop.run(
        _run(base_url + _CHAT_PATH, bodies, max_concurrency, time_limit_s)
    )
    return LoadResult(
        results=results, wall_s=wall_s, client_cpu_s=time.process_time() - cpu0, timed_out=timed_out
    )


async def _run(
    url: str, bodies: list[tuple[float, bytes]], max_concurrency: int, time_limit_s: float
) -> tuple[list[RequestResult], float, int]:
    connector = aiohttp.TCPConnector(
        limit=max_concurrency, limit_per_host=0, keepalive_timeout=60.0, force_close=False
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0)
    slots = asyncio.Semaphore(max_concurrency)
    results = [RequestResult(index=i, scheduled_s=t) for i, (t, _) in enumerate(bodies)]
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        start = loop.time()
        deadline = start + time_limit_s
        tasks: set[asyncio.Task[None]] = set()
        finished_at = [start]

        async def one(result: RequestResult, body: bytes) -> None:
            scheduled = start + result.scheduled_s
            async with slots:
                await _send(session, url, body, result, scheduled, loop)
            finished_at[0] = max(finished_at[0], loop.time())

        for result, (t, body) in zip(results, bodies, strict=True):
            delay = start + t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if loop.time() >= deadline:
                break
            tasks.add(asyncio.create_task(one(result, body)))
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            finished_at[0] = deadline
        timed_out = 0
        for result in results:
            if result.e2e_s is None and result.error is None:
                result.error = "timeout"
                timed_out += 1
        return results, finished_at[0] - start, timed_out


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    result: RequestResult,
    scheduled: float,
    loop: asyncio.AbstractEventLoop,
) -> None:
    try:
        async with session.post(
            url, data=body, headers={"content-type": "application/json"}
        ) as resp:
            result.status = resp.status
            result.pod = resp.headers.get("x-sim-pod")
            if resp.status != 200:
                await resp.read()
                result.error = f"http {resp.status}"
                result.e2e_s = loop.time() - scheduled
                return
            _nodelay_check(resp)
            tail = await _read_stream(resp, result, scheduled, loop)
            result.e2e_s = loop.time() - scheduled
            _read_usage(tail, result)
            if result.ttft_s is None:
                result.error = "no content"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        result.error = type(exc).__name__
        result.e2e_s = loop.time() - scheduled


async def _read_stream(
    resp: aiohttp.ClientResponse,
    result: RequestResult,
    scheduled: float,
    loop: asyncio.AbstractEventLoop,
) -> bytes:
    """Read the SSE stream; note the first content; return the stream's last few reads."""
    pending = b""
    tail: deque[bytes] = deque(maxlen=_TAIL_CHUNKS)
    async for chunk in resp.content.iter_any():
        if result.ttft_s is not None:
            tail.append(chunk)
            continue
        pending += chunk
        while result.ttft_s is None:
            end = pending.find(b"\n\n")
            if end < 0:
                break
            event, pending = pending[:end], pending[end + 2 :]
            if _has_content(event):
                result.ttft_s = loop.time() - scheduled
                tail.append(pending)
    return b"".join(tail)


def _has_content(event: bytes) -> bool:
    for line in event.split(b"\n"):
        if not line.startswith(b"data:") or (b'"content"' not in line and b'"text"' not in line):
            continue
        try:
            choices = orjson.loads(line[5:]).get("choices") or []
        except orjson.JSONDecodeError:
            continue
        for choice in choices:
            delta = choice.get("delta") or {}
            if delta.get("content") or choice.get("text"):
                return True
    return False


def _read_usage(tail: bytes, result: RequestResult) -> None:
    for event in reversed(tail.split(b"\n\n")):
        line = event.strip()
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        try:
            usage = orjson.loads(line[5:]).get("usage") or {}
        except orjson.JSONDecodeError:
            continue  # the cut at the tail's start fell inside this event
        result.output_tokens = usage.get("completion_tokens")
        result.prompt_tokens = usage.get("prompt_tokens")
        details = usage.get("prompt_tokens_details") or {}
        result.cached_tokens = details.get("cached_tokens")
        return


def _nodelay_check(resp: aiohttp.ClientResponse) -> None:
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
