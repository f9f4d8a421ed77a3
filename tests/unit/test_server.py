"""``epp.server.serve`` in-process: what it says at start about where ext_proc listens."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging

import pytest

from epp.config import add_serve_arguments, load_config
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
