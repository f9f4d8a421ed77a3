"""``epp.server.serve`` in-process: where ext_proc listens, and what the settings reach."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse

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


def test_a_drain_timeout_keeps_accepting_streams_after_shutdown_begins() -> None:
    # The reference EPP's --drain-timeout: NOT_SERVING at once, but a gateway that has not
    # yet seen the pod leave still gets its requests routed for that long.
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.unit.datalayer.scripted_pod import ScriptedPod, always, with_length
    from tests.unit.extproc.envoy_messages import body_message, headers_message

    async def scenario() -> tuple[list[bytes], str]:
        pod = ScriptedPod(always([with_length()]))  # a model server's /metrics page
        await pod.start()
        parser = argparse.ArgumentParser()
        add_serve_arguments(parser)
        config = load_config(
            parser.parse_args(
                [
                    "--grpc-port=0",
                    "--grpc-health-port=0",
                    "--metrics-port=0",
                    f"--endpoint={pod.address}=m",
                    "--drain-timeout=60s",
                    "--graceful-timeout=0",
                ]
            ),
            environ={},
        )
        stop = asyncio.Event()
        ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(
            serve(config, shutdown_trigger=stop.wait, on_ready=ready.set_result)
        )
        running = await asyncio.wait_for(ready, timeout=60)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stop.set()
            while True:  # shutdown has begun once health says so
                answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
                if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.01)
            call = channel.stream_stream(
                "/envoy.service.ext_proc.v3.ExternalProcessor/Process",
                request_serializer=None,
                response_deserializer=None,
            )
            messages = [
                headers_message().SerializeToString(),
                body_message(
                    b'{"model": "m", "prompt": "p"}', end_of_stream=True
                ).SerializeToString(),
            ]

            async def requests() -> AsyncIterator[bytes]:
                for message in messages:
                    yield message

            answers = [answer async for answer in call(requests(), timeout=30)]
        server.cancel()  # the drain would last a minute: the point is made
        with contextlib.suppress(asyncio.CancelledError):
            await server
        await pod.close()
        return answers, pod.address

    try:
        answers, address = asyncio.run(scenario())
    finally:
        gc.unfreeze()
    head = ProcessingResponse.FromString(answers[0])
    mutation = head.request_headers.response.header_mutation.set_headers
    destination = {h.header.key: h.header.raw_value for h in mutation}
    assert destination["x-gateway-destination-endpoint"] == address.encode()


def _scraper_children() -> set[int]:
    """This process's children that run the scraper process."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and b"epp.datalayer.scrape_worker" in argv:
            found.add(int(entry))
    return found


def _sample(name: str) -> float | None:
    from epp.observability import metrics

    return metrics.REGISTRY.get_sample_value(name)


@pytest.mark.parametrize("mode", ["process", "inline"])
def test_serve_scrapes_in_the_chosen_mode_and_reports_the_scraper(mode: str) -> None:
    from tests.unit.datalayer.scripted_pod import ScriptedPod, always, with_length

    async def scenario() -> tuple[Metrics, float | None, float | None, set[int], set[int]]:
        pod = ScriptedPod(always([with_length()]))  # waiting 5, running 3
        await pod.start()
        parser = argparse.ArgumentParser()
        add_serve_arguments(parser)
        config = load_config(
            parser.parse_args(
                [
                    "--grpc-port=0",
                    "--grpc-health-port=0",
                    "--metrics-port=0",
                    f"--endpoint={pod.address}=m",
                    f"--scrape-mode={mode}",
                    "--refresh-metrics-interval=10ms",
                ]
            ),
            environ={},
        )
        stop = asyncio.Event()
        ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(
            serve(config, shutdown_trigger=stop.wait, on_ready=ready.set_result)
        )
        running = await asyncio.wait_for(ready, timeout=60)
        # serve() reports ready after the first round of scrapes, in either mode.
        endpoint = running.store.get(pod.address)
        assert endpoint is not None
        metrics_then = endpoint.metrics
        for _ in range(1000):  # a hang guard of about 10 s
            if (_sample("epp_scraper_polls_total") or 0) >= 3:
                break
            await asyncio.sleep(0.01)
        up, polls = _sample("epp_scraper_up"), _sample("epp_scraper_polls_total")
        during = _scraper_children()
        stop.set()
        await asyncio.wait_for(server, timeout=30)
        gc.unfreeze()
        await pod.close()
        return metrics_then, up, polls, during, _scraper_children()

    metrics_then, up, polls, during, after = asyncio.run(scenario())
    assert (metrics_then.waiting_requests, metrics_then.running_requests) == (5, 3)
    assert up == 1
    assert polls is not None and polls >= 3
    assert len(during) == (1 if mode == "process" else 0)
    assert after == set()  # shutdown ended the scraper process
    assert _sample("epp_scraper_up") is None  # the collector left with serve()
