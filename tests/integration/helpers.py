"""Small helpers the integration tests share."""

from __future__ import annotations

import json
import time
from pathlib import Path

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


def finished_lines(log_path: Path, request_id: str, timeout_s: float = 10.0) -> list[str]:
    """epp's "request finished" lines for ``request_id``, waiting until one is written
    (a line is logged once the response's readings are in, after the stream ends)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [
            line
            for line in log_path.read_text().splitlines()
            if "request finished" in line and request_id in line
        ]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)
