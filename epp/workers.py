"""``epp serve --workers N``: N processes serving one ext_proc port.

Python runs one event loop per process on one core; past a core, more processes. Each
worker is a whole ``epp serve`` (its own discovery, scraping, prefix index and in-flight
counts) listening with SO_REUSEPORT on the same gRPC port, so the kernel spreads Envoy's
connections over them. They share their decisions as separate replicas do, through the
Redis of ``--sync-redis-url`` (required: without it each worker would see 1/N of the
traffic, which the issue measured at 10+ points of prefix hits lost).

The supervisor (this module) starts the workers with ``EPP_WORKER_INDEX`` set, passes
SIGTERM/SIGINT on, and restarts a worker that dies (after a second, so a worker that
cannot start does not spin).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

__all__ = ["WORKER_INDEX_ENV", "supervise", "worker_index"]

WORKER_INDEX_ENV = "EPP_WORKER_INDEX"
_RESTART_DELAY_S = 1.0

log = logging.getLogger(__name__)


def worker_index() -> int | None:
    """This process's index among the workers; None in the supervisor or a lone epp."""
    value = os.environ.get(WORKER_INDEX_ENV)
    return int(value) if value is not None and value.isdigit() else None


def supervise(arguments: Sequence[str], workers: int, *, graceful_timeout_s: float) -> int:
    """Run ``epp ARGUMENTS`` as ``workers`` processes until SIGTERM or SIGINT."""
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    children: dict[int, subprocess.Popen[bytes]] = {}
    died_at: dict[int, float] = {}
    try:
        while not stopping:
            now = time.monotonic()
            for index in range(workers):
                child = children.get(index)
                if child is not None and child.poll() is None:
                    continue
                if child is not None:
                    log.error("worker %d exited with status %s; restarting it", index, child.poll())
                    del children[index]
                    died_at[index] = now
                if now - died_at.get(index, -_RESTART_DELAY_S) >= _RESTART_DELAY_S:
                    children[index] = subprocess.Popen(
                        [sys.executable, "-m", "epp", *arguments],
                        env={**os.environ, WORKER_INDEX_ENV: str(index)},
                    )
            time.sleep(0.1)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + graceful_timeout_s + 5.0
        for child in children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
