"""Small helpers the integration tests share."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from epp.stack import ManagedProcess, free_port, loopback_serve_args, start_epp_module

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


def start_local_epp(name: str, log_dir: Path, *args: str) -> tuple[ManagedProcess, int, int]:
    """``epp serve ARGS`` on loopback with free ports, once ready: (process, ext_proc
    port, metrics port)."""
    grpc_port, metrics_port = free_port(), free_port()
    process = start_epp_module(
        name, [*loopback_serve_args(grpc_port, metrics_port), *args], log_dir=log_dir
    )
    process.wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
    return process, grpc_port, metrics_port


@contextmanager
def queue_on(pod: str, model: str) -> Iterator[None]:
    """Six long requests sent straight to ``pod`` (past Envoy or any proxy, so only its
    scraped queue tells epp), held until the block ends: inside it, the pod's queue has
    been visible to epp for several scrape intervals."""
    slow = chat(model, "keep busy", max_tokens=400)  # ~0.8 s of decode each, one at a time
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        futures = [
            pool.submit(httpx.post, f"http://{pod}/v1/chat/completions", json=slow, timeout=60.0)
            for _ in range(6)
        ]
        deadline = time.monotonic() + 10
        while pod_metric(pod, "vllm:num_requests_waiting") < 3:
            assert time.monotonic() < deadline, "the busy pod never built a queue"
            time.sleep(0.02)
        time.sleep(0.2)  # several scrape intervals: epp has seen the queue
        yield
        for future in futures:
            future.result()
