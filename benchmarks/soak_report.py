"""What a soak run saw, judged: request outcomes, recovery times, RSS, the verdict, the table.

Pure functions over what :mod:`benchmarks.soak` recorded, so they can be tested without
processes. Times are seconds from the start of the load.

Every failed request gets exactly one class, tried in this order:

- ``pod_killed``: it was routed to a pod (the ``x-sim-pod`` of its response, else the
  upstream Envoy logged for it, else the endpoint epp logged for it) while that pod was
  down: its lifetime (sent to failed) overlaps the pod's window from SIGKILL until the
  restarted pod answered ``/health``;
- ``epp_restart``: its lifetime overlaps epp's window, from SIGTERM until the new epp
  answered ``/readyz`` (plus ``EPP_READY_SLACK_S``);
- ``pod_killed`` again, by time alone: no pod is known (Envoy's 503 for a connection
  that failed names none) but its lifetime overlaps a pod's window;
- ``unexpected``: anything else. A soak passes only with none.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "EPP_READY_SLACK_S",
    "MAX_LISTED_FAILURES",
    "OUTCOMES",
    "Event",
    "RequestRecord",
    "RssSample",
    "Window",
    "classify",
    "epp_windows",
    "markdown",
    "pod_windows",
    "recovery",
    "rss_summary",
    "summarize",
]

# The soak polls /readyz every 50 ms, and Envoy opens its connection to the new epp on the
# next request: a request sent this soon after readiness was seen may still have met the
# old state.
EPP_READY_SLACK_S = 0.5

OUTCOMES = ("ok", "pod_killed", "epp_restart", "unexpected")
# Failed requests listed one by one in the report (all of them, normally).
MAX_LISTED_FAILURES = 5000


@dataclass(slots=True)
class RequestRecord:
    """One request of the load, as the client saw it."""

    index: int
    request_id: str
    stream: bool
    sent_s: float
    headers_s: float | None = None  # response headers arrived
    end_s: float | None = None  # the response ended, or the request failed
    status: int | None = None  # None: no response at all
    pod: str | None = None  # x-sim-pod
    error: str | None = None  # None: the request succeeded
    body: str = ""  # the start of a failed response's body

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Event:
    """Something the soak did to the stack, or saw it do.

    ``kind``: ``pod_kill`` (SIGKILL sent), ``pod_start`` (a new pod process started on the
    same port), ``pod_ready`` (it answered /health), ``epp_stop`` (SIGTERM sent),
    ``epp_exit``, ``epp_start``, ``epp_ready`` (/readyz answered 200), ``crash`` (a
    process of the stack exited on its own) and ``fault_error`` (a planned kill or
    restart could not be carried out). ``target`` is the pod's address or ``epp``.
    """

    kind: str
    t_s: float
    target: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Window:
    """A stretch of time during which ``target`` was down (``end_s`` None: until the end)."""

    target: str
    start_s: float
    end_s: float | None

    def overlaps(self, start_s: float, end_s: float) -> bool:
        return end_s >= self.start_s and (self.end_s is None or start_s <= self.end_s)


@dataclass(frozen=True, slots=True)
class RssSample:
    t_s: float
    epp_kib: int | None  # None while no epp runs
    envoy_kib: int | None
    epp_incarnation: int  # 0 for the first epp process, 1 after the restart


def pod_windows(events: Iterable[Event]) -> list[Window]:
    """Each pod kill until the restarted pod was ready."""
    windows: list[Window] = []
    open_at: dict[str, float] = {}
    for event in sorted(events, key=lambda e: e.t_s):
        if event.kind == "pod_kill":
            open_at.setdefault(event.target, event.t_s)
        elif event.kind == "pod_ready" and event.target in open_at:
            windows.append(Window(event.target, open_at.pop(event.target), event.t_s))
    windows += [Window(pod, start, None) for pod, start in open_at.items()]
    return sorted(windows, key=lambda w: w.start_s)


def epp_windows(events: Iterable[Event], slack_s: float = EPP_READY_SLACK_S) -> list[Window]:
    """Each SIGTERM to epp until the new epp was ready (plus ``slack_s``)."""
    windows: list[Window] = []
    start: float | None = None
    for event in sorted(events, key=lambda e: e.t_s):
        if event.kind == "epp_stop" and start is None:
            start = event.t_s
        elif event.kind == "epp_ready" and start is not None:
            windows.append(Window("epp", start, event.t_s + slack_s))
            start = None
    if start is not None:
        windows.append(Window("epp", start, None))
    return windows


def _lifetime(record: RequestRecord, end_of_run_s: float) -> tuple[float, float]:
    return record.sent_s, record.end_s if record.end_s is not None else end_of_run_s


def classify(
    records: Sequence[RequestRecord],
    events: Sequence[Event],
    routed_to: Mapping[str, str],
    end_of_run_s: float,
) -> list[str]:
    """Each record's outcome (one of ``OUTCOMES``), in order; see the module docstring.

    ``routed_to`` maps request ids to the pod Envoy or epp logged for them.
    """
    pods = pod_windows(events)
    epps = epp_windows(events)
    outcomes: list[str] = []
    for record in records:
        if record.ok:
            outcomes.append("ok")
            continue
        start, end = _lifetime(record, end_of_run_s)
        pod = record.pod or routed_to.get(record.request_id)
        if pod and any(w.target == pod and w.overlaps(start, end) for w in pods):
            outcomes.append("pod_killed")
        elif any(w.overlaps(start, end) for w in epps):
            outcomes.append("epp_restart")
        elif not pod and any(w.overlaps(start, end) for w in pods):
            outcomes.append("pod_killed")
        else:
            outcomes.append("unexpected")
    return outcomes


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "median_s": None, "max_s": None}
    return {
        "count": len(values),
        "median_s": round(statistics.median(values), 3),
        "max_s": round(max(values), 3),
    }


def recovery(
    records: Sequence[RequestRecord],
    outcomes: Sequence[str],
    events: Sequence[Event],
    routed_to: Mapping[str, str],
    end_of_run_s: float,
) -> dict[str, Any]:
    """Per kill and restart, how long requests failed and how soon service came back.

    - pod kill: ``stop_failing_s``, from SIGKILL to the sending of the last request that
      failed on that pod while it was down (0 when only requests in flight at the kill
      failed): requests sent later than that were routed elsewhere. ``in_flight_failed``
      of its failures were sent before the kill, ``routed_after_kill`` after it (epp had
      not noticed yet). ``last_failure_seen_s``: from SIGKILL to the last of those
      failures reaching the client (a cut stream reaches it when Envoy closes the
      connection, up to its 1 s ``delayed_close_timeout`` later).
    - pod restart: ``ready_s``, from the new process's start to its first /health 200;
      ``serves_again_s``, from then to the sending of the first request the pod served
      (``x-sim-pod``) after its restart.
    - epp restart: ``outage_s``, from SIGTERM to the sending of the last request that
      failed in epp's window; ``succeed_again_s``, from the new epp process's start to that
      moment (0 if it came first): requests sent later succeeded. ``failed`` requests in
      the window, ``sent_before_sigterm`` of them sent (by the client's clock) before the
      SIGTERM, ``routed_by_epp`` of them routed to a pod by epp before they failed: epp
      drains such requests on SIGTERM, so these are the ones its drain lost.
    """
    ordered = sorted(events, key=lambda e: e.t_s)
    kills: list[dict[str, Any]] = []
    for window in pod_windows(ordered):
        mine = [
            r
            for r, o in zip(records, outcomes, strict=True)
            if o == "pod_killed"
            and (r.pod or routed_to.get(r.request_id)) == window.target
            and window.overlaps(*_lifetime(r, end_of_run_s))
        ]
        seen = [r.end_s if r.end_s is not None else end_of_run_s for r in mine]
        start = next(
            (
                e.t_s
                for e in ordered
                if e.kind == "pod_start" and e.target == window.target and e.t_s >= window.start_s
            ),
            None,
        )
        entry: dict[str, Any] = {
            "pod": window.target,
            "killed_s": round(window.start_s, 3),
            "restarted_s": None if start is None else round(start, 3),
            "ready_at_s": None if window.end_s is None else round(window.end_s, 3),
            "failed": len(mine),
            "in_flight_failed": sum(1 for r in mine if r.sent_s < window.start_s),
            "routed_after_kill": sum(1 for r in mine if r.sent_s >= window.start_s),
            "stop_failing_s": round(max([0.0, *(r.sent_s - window.start_s for r in mine)]), 3),
            "last_failure_seen_s": round(max((t - window.start_s for t in seen), default=0.0), 3),
            "ready_s": None,
            "serves_again_s": None,
        }
        if start is not None and window.end_s is not None:
            entry["ready_s"] = round(window.end_s - start, 3)
            # Sent after the kill and served by the pod: routed to it after its restart.
            served = [
                r.sent_s
                for r in records
                if r.ok and r.pod == window.target and r.sent_s >= window.start_s
            ]
            if served:
                entry["serves_again_s"] = round(max(0.0, min(served) - window.end_s), 3)
        kills.append(entry)

    unattributed = sum(
        1
        for r, o in zip(records, outcomes, strict=True)
        if o == "pod_killed" and not (r.pod or routed_to.get(r.request_id))
    )
    restarts: list[dict[str, Any]] = []
    for window in epp_windows(ordered):
        mine = [
            r
            for r, o in zip(records, outcomes, strict=True)
            if o == "epp_restart" and window.overlaps(*_lifetime(r, end_of_run_s))
        ]
        after = [e for e in ordered if e.t_s >= window.start_s]
        exited = next((e for e in after if e.kind == "epp_exit"), None)
        start = next((e.t_s for e in after if e.kind == "epp_start"), None)
        ready = next((e.t_s for e in after if e.kind == "epp_ready"), None)
        last_failed = max((r.sent_s for r in mine), default=None)
        entry = {
            "sigterm_s": round(window.start_s, 3),
            "exit_code": exited.detail if exited else None,
            "exited_s": round(exited.t_s, 3) if exited else None,
            "started_s": None if start is None else round(start, 3),
            "ready_at_s": None if ready is None else round(ready, 3),
            "failed": len(mine),
            "sent_before_sigterm": sum(1 for r in mine if r.sent_s < window.start_s),
            "routed_by_epp": sum(1 for r in mine if r.pod or routed_to.get(r.request_id)),
            "outage_s": round(max(0.0, (last_failed or window.start_s) - window.start_s), 3),
            "succeed_again_s": None,
        }
        if start is not None:
            entry["succeed_again_s"] = round(max(0.0, (last_failed or start) - start), 3)
        restarts.append(entry)

    def values(items: list[dict[str, Any]], key: str) -> list[float]:
        return [float(item[key]) for item in items if item[key] is not None]

    return {
        "pod_kills": kills,
        "pod_kill_failures_without_pod": unattributed,
        "epp_restarts": restarts,
        "summary": {
            "pod_kill_stop_failing": _stats(values(kills, "stop_failing_s")),
            "pod_kill_failure_seen": _stats(values(kills, "last_failure_seen_s")),
            "pod_restart_ready": _stats(values(kills, "ready_s")),
            "pod_restart_serves_again": _stats(values(kills, "serves_again_s")),
            "epp_restart_succeed_again": _stats(values(restarts, "succeed_again_s")),
            "epp_restart_outage": _stats(values(restarts, "outage_s")),
        },
    }


def rss_summary(
    samples: Sequence[RssSample], warmup_s: float, epp_starts: Sequence[float]
) -> dict[str, Any]:
    """Start, after warm-up, min, max and end RSS (KiB) of Envoy and of each epp process.

    ``epp_starts`` are the start times of the epp processes, in order; an epp's warm-up
    sample is its first at least ``warmup_s`` after its start (None if it lived less).
    """

    def summary(points: list[tuple[float, int]], start_s: float) -> dict[str, Any]:
        if not points:
            return {"samples": 0}
        warm = next((kib for t, kib in points if t >= start_s + warmup_s), None)
        kibs = [kib for _, kib in points]
        return {
            "samples": len(points),
            "start_kib": kibs[0],
            "warm_kib": warm,
            "min_kib": min(kibs),
            "max_kib": max(kibs),
            "end_kib": kibs[-1],
            "end_over_warm": None if warm is None else round(kibs[-1] / warm, 3),
        }

    epps = []
    for n, start in enumerate(epp_starts):
        points = [
            (s.t_s, s.epp_kib) for s in samples if s.epp_incarnation == n and s.epp_kib is not None
        ]
        epps.append({"incarnation": n, "started_s": round(start, 3), **summary(points, start)})
    envoy = [(s.t_s, s.envoy_kib) for s in samples if s.envoy_kib is not None]
    return {"warmup_s": warmup_s, "epp": epps, "envoy": summary(envoy, 0.0)}


@dataclass(slots=True)
class Verdict:
    passed: bool = True
    reasons: list[str] = field(default_factory=list)

    def fail(self, reason: str) -> None:
        self.passed = False
        self.reasons.append(reason)


def summarize(
    *,
    config: Mapping[str, Any],
    records: Sequence[RequestRecord],
    events: Sequence[Event],
    routed_to: Mapping[str, str],
    samples: Sequence[RssSample],
    end_of_run_s: float,
    epp_log_lines: Mapping[str, list[str]],
) -> dict[str, Any]:
    """The whole report (what the JSON file holds), verdict included.

    The run fails when a request was lost unexpectedly, when an epp process's RSS at its
    end exceeds ``config["rss_limit"]`` times its RSS after warm-up, when a planned kill
    or restart did not happen, or when a process of the stack crashed. ``epp_log_lines``
    are epp's log lines per request id, attached to the unexpected failures.
    """
    outcomes = classify(records, events, routed_to, end_of_run_s)
    counts = {name: 0 for name in OUTCOMES}
    for outcome in outcomes:
        counts[outcome] += 1
    epp_starts = [0.0] + [e.t_s for e in events if e.kind == "epp_start"]
    rss = rss_summary(samples, float(config["warmup_s"]), epp_starts)
    recovered = recovery(records, outcomes, events, routed_to, end_of_run_s)

    verdict = Verdict()
    if counts["unexpected"]:
        verdict.fail(f"{counts['unexpected']} request(s) lost unexpectedly")
    limit = float(config["rss_limit"])
    for epp in rss["epp"]:
        ratio = epp.get("end_over_warm")
        if ratio is not None and ratio > limit:
            verdict.fail(
                f"epp process {epp['incarnation']}: RSS grew to {ratio:.2f}x its "
                f"RSS after warm-up (limit {limit}x)"
            )
    planned = config.get("planned", {})
    done = {"pod_kill": 0, "pod_ready": 0, "epp_stop": 0, "epp_ready": 0}
    for event in events:
        if event.kind in done:
            done[event.kind] += 1
        elif event.kind in ("crash", "fault_error"):
            verdict.fail(f"{event.kind} at {event.t_s:.1f}s: {event.target} {event.detail}")
    if done["pod_kill"] < planned.get("pod_kills", 0) or done["pod_ready"] < done["pod_kill"]:
        verdict.fail(
            f"pods killed {done['pod_kill']} (planned {planned.get('pod_kills')}), "
            f"back {done['pod_ready']}"
        )
    if done["epp_stop"] < planned.get("epp_restarts", 0) or done["epp_ready"] < done["epp_stop"]:
        verdict.fail(f"epp restarted {done['epp_ready']} of {planned.get('epp_restarts')}")
    for restart in recovered["epp_restarts"]:
        if restart["exit_code"] not in (None, "0"):
            verdict.fail(f"epp exited with status {restart['exit_code']} on SIGTERM")

    failed: list[dict[str, Any]] = []
    for record, outcome in zip(records, outcomes, strict=True):
        if outcome != "ok" and len(failed) < MAX_LISTED_FAILURES:
            failed.append(
                {
                    "outcome": outcome,
                    **asdict(record),
                    "routed_to": routed_to.get(record.request_id),
                    "epp_log": epp_log_lines.get(record.request_id, [])[:5],
                }
            )
    failures_by_class: dict[str, dict[str, int]] = {}
    for record, outcome in zip(records, outcomes, strict=True):
        if outcome != "ok":
            bucket = failures_by_class.setdefault(outcome, {})
            kind = _failure_kind(record)
            bucket[kind] = bucket.get(kind, 0) + 1
    return {
        "config": dict(config),
        "passed": verdict.passed,
        "reasons": verdict.reasons,
        "requests": {
            "total": len(records),
            **counts,
            "streamed": sum(1 for r in records if r.stream),
            "failures_by_class": failures_by_class,
        },
        "recovery": recovered,
        "rss": rss,
        "rss_samples": [asdict(s) for s in samples],
        "events": [asdict(e) for e in events],
        "unexpected": [f for f in failed if f["outcome"] == "unexpected"],
        "failed": failed,
    }


def _failure_kind(record: RequestRecord) -> str:
    """``http 503``, or the exception's name, or ``200, then <what went wrong>``."""
    what = (record.error or "").split(":")[0][:60]
    if record.status is None:
        return what
    if record.status == 200:
        return f"200, then {what}"
    return f"http {record.status}"


def _diff(end: float | None, start: float | None) -> float | None:
    return None if end is None or start is None else end - start


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def _sec(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(report: Mapping[str, Any], rows: int = 8) -> str:
    """The printed summary: RSS over time, requests by outcome, recovery times, verdict."""
    config = report["config"]
    requests = report["requests"]
    lines = [
        f"# Soak: {config['duration_s']:.0f} s, {config['rate']} req/s offered, "
        f"{config['pods']} pods, prompts {config['prompt_bytes']} bytes, "
        f"{config['stream_share']:.0%} streamed",
        "",
        "## RSS over time (MiB)",
        "",
        "| t (s) | epp | epp process | Envoy |",
        "| ---: | ---: | ---: | ---: |",
    ]
    samples = report["rss_samples"]
    if samples:
        step = max(1, (len(samples) - 1) // max(1, rows - 1))
        picked = samples[::step]
        if picked[-1] is not samples[-1]:
            picked.append(samples[-1])
        for s in picked:
            lines.append(
                f"| {s['t_s']:.0f} | {_mib(s['epp_kib'])} | {s['epp_incarnation']} "
                f"| {_mib(s['envoy_kib'])} |"
            )
    rss = report["rss"]
    lines += [
        "",
        f"| process | start | after warm-up ({rss['warmup_s']:.0f} s) | min | max "
        "| end | end / warm-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    named = [(f"epp #{e['incarnation']}", e) for e in rss["epp"]] + [("Envoy", rss["envoy"])]
    for name, entry in named:
        if not entry.get("samples"):
            continue
        ratio = entry["end_over_warm"]
        lines.append(
            f"| {name} | {_mib(entry['start_kib'])} | {_mib(entry['warm_kib'])} "
            f"| {_mib(entry['min_kib'])} | {_mib(entry['max_kib'])} | {_mib(entry['end_kib'])} "
            f"| {'-' if ratio is None else f'{ratio:.2f}'} |"
        )
    total = max(1, requests["total"])
    lines += [
        "",
        "## Requests by outcome",
        "",
        "| outcome | requests | share | failures |",
        "| --- | ---: | ---: | --- |",
    ]
    for name in OUTCOMES:
        kinds = requests["failures_by_class"].get(name, {})
        detail = ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
        lines.append(
            f"| {name} | {requests[name]} | {100 * requests[name] / total:.2f} % | {detail} |"
        )
    lines.append(f"| total | {requests['total']} | | {requests['streamed']} streamed |")
    summary = report["recovery"]["summary"]
    lines += [
        "",
        "## Recovery (s)",
        "",
        "| after | measured | events | median | max |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for key, after, measured in (
        ("pod_kill_stop_failing", "pod SIGKILL", "until requests sent stop failing"),
        ("pod_kill_failure_seen", "pod SIGKILL", "until the last failure reaches a client"),
        ("pod_restart_ready", "pod restart", "process start to /health 200"),
        ("pod_restart_serves_again", "pod restart", "/health 200 to a request it serves"),
        ("epp_restart_outage", "epp SIGTERM", "until requests sent stop failing"),
        (
            "epp_restart_succeed_again",
            "epp restart",
            "new process start until requests sent stop failing",
        ),
    ):
        s = summary[key]
        lines.append(
            f"| {after} | {measured} | {s['count']} | {_sec(s['median_s'])} | {_sec(s['max_s'])} |"
        )
    lines.append("")
    kills = report["recovery"]["pod_kills"]
    if kills:
        lines.append(
            f"Pod kills: {sum(k['failed'] for k in kills)} requests failed, "
            f"{sum(k['routed_after_kill'] for k in kills)} of them routed to the pod "
            "after its kill."
        )
    for restart in report["recovery"]["epp_restarts"]:
        lines.append(
            f"epp restart: SIGTERM to exit (status {restart['exit_code']}) "
            f"{_sec(_diff(restart['exited_s'], restart['sigterm_s']))} s, start to "
            f"/readyz {_sec(_diff(restart['ready_at_s'], restart['started_s']))} s; "
            f"{restart['failed']} requests failed, {restart['routed_by_epp']} of "
            "them already routed by epp (its drain should have finished those)."
        )
    lines += ["", "PASS" if report["passed"] else "FAIL: " + "; ".join(report["reasons"])]
    return "\n".join(lines) + "\n"
