"""The soak's schedule, failure classes, recovery times and verdict, without processes."""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import pytest

from benchmarks.soak import SoakConfig, parse_duration, plan
from benchmarks.soak_report import (
    Event,
    RequestRecord,
    RssSample,
    classify,
    markdown,
    recovery,
    rss_summary,
    summarize,
)

POD_A, POD_B = "127.0.0.1:20001", "127.0.0.1:20002"

# Pod A is down from 10 s to 14 s; epp from 20 s until it is ready at 22 s.
EVENTS = [
    Event("pod_kill", 10.0, POD_A),
    Event("pod_start", 13.0, POD_A),
    Event("pod_ready", 14.0, POD_A),
    Event("epp_stop", 20.0, "epp"),
    Event("epp_exit", 20.5, "epp", "0"),
    Event("epp_start", 20.5, "epp"),
    Event("epp_ready", 22.0, "epp"),
]


def ok(index: int, sent_s: float, pod: str, stream: bool = False) -> RequestRecord:
    return RequestRecord(
        index,
        f"r{index}",
        stream,
        sent_s,
        headers_s=sent_s + 0.01,
        end_s=sent_s + 0.5,
        status=200,
        pod=pod,
    )


def failed(
    index: int,
    sent_s: float,
    end_s: float,
    *,
    status: int | None = 503,
    pod: str | None = None,
    error: str = "http 503",
) -> RequestRecord:
    return RequestRecord(
        index, f"r{index}", False, sent_s, end_s=end_s, status=status, pod=pod, error=error
    )


@pytest.mark.parametrize(
    ("record", "routed", "expected"),
    [
        (ok(0, 1.0, POD_A), {}, "ok"),
        # In flight on A when it was killed: the cut stream names its pod itself.
        (
            failed(1, 9.5, 11.0, status=200, pod=POD_A, error="RemoteProtocolError: cut"),
            {},
            "pod_killed",
        ),
        # Envoy's 503 names no pod; its access log does.
        (failed(2, 10.2, 10.3), {"r2": POD_A}, "pod_killed"),
        # Routed to A after A was ready again: not excused.
        (failed(3, 14.5, 14.6), {"r3": POD_A}, "unexpected"),
        # Routed to B, which never went down, while A was down: not excused.
        (failed(4, 11.0, 11.1), {"r4": POD_B}, "unexpected"),
        # No pod known, while A was down: excused by time alone.
        (failed(5, 11.0, 11.1, status=None, error="ConnectError: refused"), {}, "pod_killed"),
        (failed(6, 21.0, 21.01), {}, "epp_restart"),
        # Within the slack after epp's readiness, then after it.
        (failed(7, 22.3, 22.31), {}, "epp_restart"),
        (failed(8, 23.0, 23.01), {}, "unexpected"),
        (failed(9, 30.0, 30.01, status=None, error="ReadTimeout"), {}, "unexpected"),
    ],
    ids=[
        "ok",
        "cut-stream",
        "envoy-503-by-log",
        "after-ready",
        "other-pod",
        "by-time",
        "epp-down",
        "epp-slack",
        "after-epp-ready",
        "no-fault-near",
    ],
)
def test_each_failure_gets_its_class(
    record: RequestRecord, routed: dict[str, str], expected: str
) -> None:
    assert classify([record], EVENTS, routed, end_of_run_s=40.0) == [expected]


def test_a_pod_that_never_came_back_excuses_failures_until_the_end() -> None:
    events = [Event("pod_kill", 10.0, POD_A)]
    records = [failed(0, 35.0, 35.1, pod=POD_A)]
    assert classify(records, events, {}, end_of_run_s=40.0) == ["pod_killed"]


def test_recovery_times_per_kill_and_restart() -> None:
    records = [
        ok(0, 9.0, POD_A, stream=True),
        failed(1, 9.5, 11.0, status=200, pod=POD_A, error="RemoteProtocolError"),  # in flight
        failed(2, 10.3, 10.31, pod=POD_A),  # routed before epp noticed
        ok(3, 10.4, POD_B),
        ok(4, 14.2, POD_B),
        ok(5, 14.3, POD_A),  # A serves again 0.3 s after /health
        failed(6, 20.1, 20.11),
        failed(7, 21.9, 21.91),
        # Routed by epp before its SIGTERM, then lost while it drained.
        failed(9, 19.9, 20.3, status=200, pod=POD_B, error="RemoteProtocolError"),
        ok(8, 22.1, POD_B),
    ]
    outcomes = classify(records, EVENTS, {}, 40.0)
    result = recovery(records, outcomes, EVENTS, {}, 40.0)
    (kill,) = result["pod_kills"]
    assert kill["failed"] == 2 and kill["in_flight_failed"] == 1
    assert kill["routed_after_kill"] == 1
    assert kill["stop_failing_s"] == pytest.approx(0.3)
    assert kill["last_failure_seen_s"] == pytest.approx(1.0)
    assert kill["ready_s"] == pytest.approx(1.0)
    assert kill["serves_again_s"] == pytest.approx(0.3)
    (restart,) = result["epp_restarts"]
    assert restart["failed"] == 3 and restart["sent_before_sigterm"] == 1
    assert restart["routed_by_epp"] == 1
    # The last failure was sent at 21.9 s: 1.4 s after the new epp started.
    assert restart["succeed_again_s"] == pytest.approx(1.4)
    assert restart["outage_s"] == pytest.approx(1.9)
    assert restart["exit_code"] == "0"
    assert result["summary"]["pod_restart_serves_again"]["count"] == 1


def test_rss_summary_per_epp_process() -> None:
    samples = [
        RssSample(t, epp, 50_000, incarnation)
        for t, epp, incarnation in [
            (0.0, 60_000, 0),
            (5.0, 80_000, 0),
            (10.0, 90_000, 0),
            (15.0, None, 0),
            (16.0, 55_000, 1),
            (21.0, 70_000, 1),
            (30.0, 77_000, 1),
        ]
    ]
    rss = rss_summary(samples, warmup_s=5.0, epp_starts=[0.0, 15.5])
    first, second = rss["epp"]
    assert (first["start_kib"], first["warm_kib"], first["end_kib"]) == (60_000, 80_000, 90_000)
    assert first["end_over_warm"] == pytest.approx(1.125)
    assert (second["warm_kib"], second["max_kib"]) == (70_000, 77_000)
    assert rss["envoy"]["samples"] == 7


def _config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "duration_s": 40.0,
        "rate": 2.0,
        "pods": 2,
        "prompt_bytes": 16384,
        "stream_share": 0.5,
        "warmup_s": 5.0,
        "rss_limit": 1.5,
        "planned": {"pod_kills": 1, "epp_restarts": 1},
    }
    return {**config, **overrides}


def _summary(
    records: list[RequestRecord],
    samples: list[RssSample] | None = None,
    events: list[Event] | None = None,
    **config: Any,
) -> dict[str, Any]:
    return summarize(
        config=_config(**config),
        records=records,
        events=EVENTS if events is None else events,
        routed_to={},
        samples=samples or [],
        end_of_run_s=40.0,
        epp_log_lines={"r1": ["line about r1"]},
    )


def test_the_verdict_fails_on_an_unexpected_loss_and_lists_it() -> None:
    report = _summary([ok(0, 1.0, POD_A), failed(1, 30.0, 30.1, pod=POD_B)])
    assert not report["passed"]
    assert report["requests"]["unexpected"] == 1
    (lost,) = report["unexpected"]
    assert lost["request_id"] == "r1" and lost["epp_log"] == ["line about r1"]
    assert "FAIL: 1 request(s) lost unexpectedly" in markdown(report)


def test_the_verdict_passes_with_excused_failures_only() -> None:
    records = [ok(0, 1.0, POD_A), failed(1, 10.5, 10.6, pod=POD_A), failed(2, 21.0, 21.1)]
    report = _summary(records)
    assert report["passed"], report["reasons"]
    assert (report["requests"]["pod_killed"], report["requests"]["epp_restart"]) == (1, 1)
    assert report["requests"]["failures_by_class"]["pod_killed"] == {"http 503": 1}
    text = markdown(report)
    assert text.rstrip().endswith("PASS")
    widths = {
        line.count("|")
        for line in text.splitlines()
        if line.startswith("| outcome") or line.startswith("| ok")
    }
    assert len(widths) == 1


def test_the_verdict_fails_when_epp_rss_grows_past_the_limit() -> None:
    samples = [
        RssSample(0.0, 50_000, 1, 0),
        RssSample(6.0, 60_000, 1, 0),
        RssSample(19.0, 100_000, 1, 0),
    ]
    report = _summary([ok(0, 1.0, POD_A)], samples)
    assert not report["passed"]
    assert "RSS grew to 1.67x" in report["reasons"][0]
    assert _summary([ok(0, 1.0, POD_A)], samples, rss_limit=2.0)["passed"]


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        (EVENTS[:2], "pods killed 1 (planned 1), back 0"),
        (EVENTS[:3], "epp restarted 0 of 1"),
        ([*EVENTS, Event("crash", 30.0, "envoy", "exited with -11")], "crash at 30.0s"),
        (
            [*EVENTS[:4], Event("epp_exit", 20.5, "epp", "1"), *EVENTS[5:]],
            "epp exited with status 1",
        ),
    ],
    ids=["pod-not-back", "epp-not-restarted", "crash", "epp-exit-status"],
)
def test_the_verdict_fails_when_the_stack_misbehaves(events: list[Event], reason: str) -> None:
    report = _summary([ok(0, 1.0, POD_A)], events=events)
    assert not report["passed"]
    assert any(reason in r for r in report["reasons"]), report["reasons"]


def test_the_plan_kills_every_pod_and_restarts_epp_in_the_middle() -> None:
    faults = plan(SoakConfig(duration_s=1800.0, pods=4))
    kills = [f for f in faults if f.kind == "pod_kill"]
    (epp,) = [f for f in faults if f.kind == "epp_restart"]
    assert len(kills) == 14  # one per 120 s of the 1,680 s between warm-up and tail
    assert {f.pod for f in kills} == {0, 1, 2, 3}
    assert all(60.0 < f.t_s < 1740.0 for f in faults)
    assert epp.t_s == pytest.approx(900.0, abs=60.0)
    times = [f.t_s for f in faults]
    assert times == sorted(times)
    assert min(b - a for a, b in itertools.pairwise(times)) > 10.0 + 2.0


def test_a_short_plan_and_one_that_does_not_fit() -> None:
    faults = plan(SoakConfig(duration_s=25.0, pods=2, kills=1, down_s=3.0))
    assert [f.kind for f in faults] == ["pod_kill", "epp_restart"]
    with pytest.raises(ValueError, match="do not fit"):
        plan(SoakConfig(duration_s=25.0, pods=2, kills=4, down_s=3.0))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800.0), ("20s", 20.0), ("1.5h", 5400.0), ("250ms", 0.25), ("90", 90.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_bad_duration_is_an_argument_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("soon")
