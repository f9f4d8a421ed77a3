"""Raw HTTP/1.1 through a real Envoy in front of epp (the properties: ``http_oracle``).

Each example is a batch of requests on their own connections, sent concurrently, then a
valid request that must still be served by a pod, then the vitals of epp and Envoy.
Both ext_proc body modes, one test each: FULL_DUPLEX_STREAMED (the default) and BUFFERED.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, seed
from hypothesis import strategies as st

from tests.fuzz.budget import BUDGET, fuzz_settings
from tests.fuzz.harness import FuzzStack, Vitals
from tests.fuzz.http_oracle import HttpResult, check_http, send_case
from tests.fuzz.http_strategies import HTTP_POOL_SLOTS, HttpCase, http_cases, probe_cases
from tests.fuzz.tally import TALLY

# Shrinking a failure against real processes can outlast the suite's default timeout.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
_LOW, _HIGH = BUDGET.batch_sizes(BUDGET.requests_per_example)

FUZZ = fuzz_settings(BUDGET.http_examples)


@pytest.fixture(scope="module")
def http_workers() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(
        max(2, BUDGET.requests_per_example), thread_name_prefix="fuzz-http"
    ) as workers:
        yield workers


def _fuzz(
    body_mode: str,
    batch: list[HttpCase],
    probe: HttpCase,
    stack: FuzzStack,
    vitals: Vitals,
    workers: ThreadPoolExecutor,
) -> None:
    target = f"http {body_mode.lower()}"
    host, port = stack.envoy_url(body_mode).split(":")
    address = (host, int(port))
    slots = dict(
        zip(
            HTTP_POOL_SLOTS, (a.encode() for a in [*stack.pool.pods, *stack.pool.dead]), strict=True
        )
    )
    cases = [case.resolved(slots) for case in batch]
    results: list[HttpResult] = list(
        workers.map(lambda case: send_case(address, case, BUDGET.call_timeout_s), cases)
    )
    failures: list[str] = []
    for result in results:
        TALLY.count(target, result.case.family, result.outcome)
        for problem in check_http(result, stack.pool):
            TALLY.violation(problem, case=repr(result.case), outcome=result.outcome, target=target)
            failures.append(
                f"{problem}\n  outcome: {result.outcome}\n{result.case!r}\n"
                f"  answer: {result.raw[:300]!r}"
            )
    probe_result = send_case(address, probe, BUDGET.call_timeout_s)
    for problem in [
        f"probe after the batch: {p}" for p in check_http(probe_result, stack.pool)
    ] + vitals.check():
        TALLY.violation(
            problem,
            case="\n".join(repr(c) for c in cases),
            outcome=probe_result.outcome,
            target=target,
        )
        failures.append(problem)
    if failures and not BUDGET.campaign:
        raise AssertionError(
            f"{len(failures)} broken properties (seed {BUDGET.seed}):\n\n"
            + "\n\n".join(failures[:5])
        )


_BATCHES = st.lists(http_cases(), min_size=_LOW, max_size=_HIGH)


# One test per body mode, each with a seed of its own, so the two see different requests.
@FUZZ
@seed(BUDGET.seed + 10)
@given(batch=_BATCHES, probe=probe_cases())
def test_http_through_envoy_full_duplex(
    batch: list[HttpCase],
    probe: HttpCase,
    fuzz_stack: FuzzStack,
    vitals: Vitals,
    http_workers: ThreadPoolExecutor,
) -> None:
    _fuzz("FULL_DUPLEX_STREAMED", batch, probe, fuzz_stack, vitals, http_workers)


@FUZZ
@seed(BUDGET.seed + 11)
@given(batch=_BATCHES, probe=probe_cases())
def test_http_through_envoy_buffered(
    batch: list[HttpCase],
    probe: HttpCase,
    fuzz_stack: FuzzStack,
    vitals: Vitals,
    http_workers: ThreadPoolExecutor,
) -> None:
    _fuzz("BUFFERED", batch, probe, fuzz_stack, vitals, http_workers)
