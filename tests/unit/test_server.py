"""``epp.server.serve`` in-process: where ext_proc listens, and what the settings reach."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import time

import pytest

from epp.config import add_serve_arguments, load_config
from epp.datalayer.endpoint import Endpoint, Metrics
from epp.scheduling.types import LLMRequest
from epp.server import Running, serve


async def _start_and_stop(*flags: str) -> Running:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = load_config(
        parser.parse_args(
            [
                "--grpc-port=0",
                "--grpc-health-port=0",
                "--metrics-port=0",
                "--endpoint=127.0.0.1:9",
                *flags,
            ]
        ),
        environ={},
    )
    stop = asyncio.Event()
    seen: list[Running] = []

    def on_ready(running: Running) -> None:
        seen.append(running)
        stop.set()

    try:
        await asyncio.wait_for(
            serve(config, shutdown_trigger=stop.wait, on_ready=on_ready), timeout=60
        )
    finally:
        gc.unfreeze()  # serve() freezes what it built, as a long-lived process would
    assert seen, "epp never became ready"
    return seen[0]


@pytest.mark.parametrize(
    ("flags", "warned"),
    [
        ((), False),  # loopback by default beside a standalone Envoy
        (("--grpc-host=0.0.0.0",), True),
        (("--grpc-host=0.0.0.0", "--secure-serving"), False),
    ],
    ids=["default", "plaintext-everywhere", "tls-everywhere"],
)
def test_plaintext_ext_proc_open_to_other_hosts_is_warned_about(
    caplog: pytest.LogCaptureFixture, flags: tuple[str, ...], warned: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="epp.server"):
        asyncio.run(_start_and_stop(*flags))
    warnings = [r.getMessage() for r in caplog.records if "without TLS" in r.getMessage()]
    assert bool(warnings) is warned, warnings


@pytest.mark.parametrize(
    ("flags", "one_second_is_fresh"),
    [((), True), (("--metrics-staleness-threshold=500ms",), False)],
    ids=["default-2s", "500ms"],
)
def test_one_staleness_threshold_for_health_and_the_prefer_fresh_filter(
    flags: tuple[str, ...], one_second_is_fresh: bool
) -> None:
    director = asyncio.run(_start_and_stop(*flags)).director
    now = time.monotonic()
    fresh = Endpoint("10.0.0.1:8000", metrics=Metrics(updated_at=now - 0.1))
    older = Endpoint("10.0.0.2:8000", metrics=Metrics(updated_at=now - 1.0))
    # Health reads the saturation detector's threshold, the one admission uses.
    assert director.is_healthy(older) is one_second_is_fresh
    result = director.scheduler.schedule(LLMRequest("r", "m", "hi"), [fresh, older])
    assert (older in result.endpoints) is one_second_is_fresh
