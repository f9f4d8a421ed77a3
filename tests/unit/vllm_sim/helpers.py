"""Shared helpers for the simulator tests: fake time, a gated sleep, a pod plus a session."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from vllm_sim import PodSpec, RunningPod, SimConfig, start_pod

FAST = SimConfig(time_scale=0)


class FakeTime:
    """A clock and a sleep for the engine: sleeping advances the clock at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)
        self.now += delay_s
        await asyncio.sleep(0)


class Gate:
    """A stand-in for asyncio.sleep that blocks every sleeper until ``open()``."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.calls = 0

    async def sleep(self, delay_s: float) -> None:
        self.calls += 1
        await self._event.wait()

    def open(self) -> None:
        self._event.set()


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Yield to the loop until ``predicate()`` holds; fail (not time out silently) otherwise."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never reached: {what}")


@asynccontextmanager
async def serve(
    config: SimConfig = FAST,
    *,
    models: tuple[str, ...] = ("m",),
    name: str | None = None,
    gate: Gate | None = None,
) -> AsyncIterator[tuple[RunningPod, aiohttp.ClientSession]]:
    pod = await start_pod(
        PodSpec(models=models, name=name), config, sleep=gate.sleep if gate else None
    )
    try:
        async with aiohttp.ClientSession(base_url=pod.url) as session:
            yield pod, session
    finally:
        if gate is not None:
            gate.open()
        await pod.close()


def sse_events(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e.removeprefix("data: ") for e in events]


def chat_body(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def metric_value(text: str, name: str) -> float:
    """The value of the single sample of ``name`` (any labels) in an exposition text."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    ]
    assert len(values) == 1, (name, values)
    return values[0]


def loads(text: str) -> Any:
    return json.loads(text)
