"""The fuzz session: one stack (pods, epp, Envoys), a gRPC client, and epp's vital signs.

The seed and budget are printed in the header; the tally is printed at the end and,
with ``EPP_FUZZ_REPORT``, written as JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import grpc
import pytest

from tests.fuzz.budget import BUDGET
from tests.fuzz.extproc_client import METHOD, honours_rewrite_header
from tests.fuzz.harness import EXCEPTION_METRIC, FuzzStack, GrpcClient, Vitals
from tests.fuzz.tally import TALLY


def pytest_report_header(config: pytest.Config) -> str:
    mode = "campaign" if BUDGET.campaign else "strict"
    return (
        f"epp fuzz: seed {BUDGET.seed}, {mode} mode, {BUDGET.examples} examples per "
        f"ext_proc property, {BUDGET.http_examples} per HTTP property "
        f"(replay: {BUDGET.replay_hint()})"
    )


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not TALLY.sent:
        return
    terminalreporter.write_sep("=", f"epp fuzz tally (seed {BUDGET.seed})")
    terminalreporter.write_line(f"replay: {BUDGET.replay_hint()} pytest tests/fuzz")
    for line in TALLY.summary_lines():
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    stack = FuzzStack(tmp_path_factory.mktemp("fuzz"))
    try:
        stack.start()
        epp = stack.epp
        epp.log.poll()
        TALLY.settings.update(
            seed=BUDGET.seed,
            mode="campaign" if BUDGET.campaign else "strict",
            examples_per_property=BUDGET.examples,
            http_examples=BUDGET.http_examples,
            streams_per_example=BUDGET.streams_per_example,
            requests_per_example=BUDGET.requests_per_example,
            call_timeout_s=BUDGET.call_timeout_s,
            replay=BUDGET.replay_hint(),
            pool={**stack.pool.pods, **stack.pool.dead},
            epp_log=str(epp.process.log_path),
        )
        TALLY.epp.update(
            rss_kib_before=epp.rss_kib(),
            stream_errors_before=epp.stream_errors(),
            tracebacks_at_start=epp.log.tracebacks,
        )
        yield stack
    finally:
        _epp_figures(stack)
        TALLY.epp["exit_codes"] = stack.stop()
        if BUDGET.report_path:
            TALLY.write(BUDGET.report_path)


def _epp_figures(stack: FuzzStack) -> None:
    if not hasattr(stack, "epp"):
        return
    epp = stack.epp
    TALLY.epp["alive_at_end"] = epp.alive()
    if epp.alive():
        TALLY.epp.update(rss_kib_after=epp.rss_kib(), stream_errors_after=epp.stream_errors())
    epp.log.poll()
    TALLY.epp.update(
        tracebacks=epp.log.tracebacks,
        error_lines=epp.log.errors[:20],
        exceptions=dict(epp.log.exceptions.most_common()),
        traceback_examples=epp.log.traceback_examples,
    )


@pytest.fixture(scope="session")
def vitals(fuzz_stack: FuzzStack) -> Vitals:
    return Vitals(fuzz_stack, fuzz_stack.epp.counter(EXCEPTION_METRIC))


@pytest.fixture(scope="session")
def grpc_client(fuzz_stack: FuzzStack) -> Iterator[GrpcClient]:
    channel = grpc.insecure_channel(
        f"127.0.0.1:{fuzz_stack.epp.grpc_port}",
        options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)],
    )
    grpc.channel_ready_future(channel).result(timeout=30)
    workers = ThreadPoolExecutor(
        max(2, BUDGET.streams_per_example), thread_name_prefix="fuzz-stream"
    )
    call = channel.stream_stream(METHOD)
    fuzz_stack.pool = replace(
        fuzz_stack.pool, honours_rewrite_header=honours_rewrite_header(call, fuzz_stack.pool)
    )
    TALLY.settings["epp_honours_rewrite_header"] = fuzz_stack.pool.honours_rewrite_header
    try:
        yield GrpcClient(channel, call, workers)
    finally:
        workers.shutdown(wait=True)
        channel.close()
