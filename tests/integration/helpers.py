"""Small helpers the integration tests share."""

from __future__ import annotations

import json

import httpx

QWEN = "qwen2-1-5b"
GEMMA = "gemma-2-2b"
GHOST = "ghost-model"  # served only by an endpoint that never answers: 503


def pod_metric(address: str, name: str) -> float:
    """Sum of a metric's samples on a simulated pod (all label sets)."""
    text = httpx.get(f"http://{address}/metrics", timeout=5.0).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pod_requests(address: str) -> list[dict[str, object]]:
    """What the simulated pod received, newest last."""
    log = httpx.get(f"http://{address}/sim/requests", timeout=5.0).json()
    assert isinstance(log, list)
    return log


def chat(model: str, content: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def dumps(document: object) -> bytes:
    return json.dumps(document).encode()
