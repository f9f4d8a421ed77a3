"""ext_proc streams straight at epp's gRPC port (the properties: ``extproc_oracle``).

Each example is a batch of streams sent concurrently on one channel, then one valid
request that must still be routed, then epp's vitals (alive, no traceback in its log, no
``stream_errors{reason="exception"}``).
"""

from __future__ import annotations

import pytest
from hypothesis import given, seed
from hypothesis import strategies as st

from tests.fuzz.bodies import valid_request_bodies
from tests.fuzz.budget import BUDGET, fuzz_settings
from tests.fuzz.extproc_client import StreamResult, run_stream
from tests.fuzz.extproc_oracle import check_stream
from tests.fuzz.extproc_strategies import (
    POOL_SLOTS,
    StreamCase,
    body_message,
    cancelled_streams,
    disordered_streams,
    garbage_streams,
    observing_streams,
    ordered_streams,
    realistic_request_headers,
    resolve_case,
    tagged_streams,
)
from tests.fuzz.harness import FuzzStack, GrpcClient, Vitals
from tests.fuzz.tally import TALLY

# Shrinking a failure against real processes can outlast the suite's default timeout.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

FUZZ = fuzz_settings(BUDGET.examples)
TARGET = "extproc"


def _batches(family: st.SearchStrategy[StreamCase]) -> st.SearchStrategy[list[StreamCase]]:
    low, high = BUDGET.batch_sizes(BUDGET.streams_per_example)
    return st.lists(family, min_size=low, max_size=high)


@st.composite
def _probes(draw: st.DrawFn) -> StreamCase:
    """A request every epp must route: full duplex, a served model, the body in one piece."""
    head = draw(realistic_request_headers(end_of_stream=False))
    body, _, _ = draw(valid_request_bodies())
    del head.request_headers.headers.headers[:]
    for key, value in (
        (":method", b"POST"),
        (":path", b"/v1/chat/completions"),
        ("content-type", b"application/json"),
    ):
        head.request_headers.headers.headers.add(key=key, raw_value=value)
    head.ClearField("protocol_config")
    head.ClearField("metadata_context")
    return StreamCase((head, body_message(body, True)), family="probe")


def _fuzz(
    batch: list[StreamCase], probe: StreamCase, client: GrpcClient, stack: FuzzStack, vitals: Vitals
) -> None:
    slots = dict(zip(POOL_SLOTS, [*stack.pool.pods, *stack.pool.dead], strict=True))
    cases = [resolve_case(case, slots) for case in batch]

    results: list[StreamResult] = list(
        client.pool.map(lambda case: run_stream(client.call, case, BUDGET.call_timeout_s), cases)
    )
    failures: list[str] = []
    for result in results:
        TALLY.count(TARGET, result.case.family, result.outcome)
        for problem in check_stream(result, stack.pool):
            TALLY.violation(problem, case=repr(result.case), outcome=result.outcome, target=TARGET)
            failures.append(f"{problem}\n  outcome: {result.outcome}\n{result.case!r}")
    probe_result = run_stream(client.call, probe, BUDGET.call_timeout_s)
    probe_problems = check_stream(probe_result, stack.pool)
    if "routed" not in probe_result.outcome:
        probe_problems.append(f"not routed: {probe_result.outcome}")
    for problem in [f"probe after the batch: {p}" for p in probe_problems] + vitals.check():
        TALLY.violation(
            problem,
            case="\n".join(repr(c) for c in cases),
            outcome=probe_result.outcome,
            target=TARGET,
        )
        failures.append(problem)
    if failures and not BUDGET.campaign:
        raise AssertionError(
            f"{len(failures)} broken properties (seed {BUDGET.seed}):\n\n"
            + "\n\n".join(failures[:5])
        )


@FUZZ
@seed(BUDGET.seed)
@given(batch=_batches(ordered_streams()), probe=_probes())
def test_streams_in_envoys_order(
    batch: list[StreamCase],
    probe: StreamCase,
    grpc_client: GrpcClient,
    fuzz_stack: FuzzStack,
    vitals: Vitals,
) -> None:
    _fuzz(batch, probe, grpc_client, fuzz_stack, vitals)


@FUZZ
@seed(BUDGET.seed + 1)
@given(batch=_batches(disordered_streams()), probe=_probes())
def test_streams_out_of_order(
    batch: list[StreamCase],
    probe: StreamCase,
    grpc_client: GrpcClient,
    fuzz_stack: FuzzStack,
    vitals: Vitals,
) -> None:
    _fuzz(batch, probe, grpc_client, fuzz_stack, vitals)


@FUZZ
@seed(BUDGET.seed + 2)
@given(batch=_batches(st.one_of(garbage_streams(), cancelled_streams())), probe=_probes())
def test_garbage_and_cancelled_streams(
    batch: list[StreamCase],
    probe: StreamCase,
    grpc_client: GrpcClient,
    fuzz_stack: FuzzStack,
    vitals: Vitals,
) -> None:
    _fuzz(batch, probe, grpc_client, fuzz_stack, vitals)


@FUZZ
@seed(BUDGET.seed + 3)
@given(batch=_batches(st.one_of(observing_streams(), tagged_streams())), probe=_probes())
def test_observing_streams_beside_routing_ones(
    batch: list[StreamCase],
    probe: StreamCase,
    grpc_client: GrpcClient,
    fuzz_stack: FuzzStack,
    vitals: Vitals,
) -> None:
    _fuzz(batch, probe, grpc_client, fuzz_stack, vitals)
