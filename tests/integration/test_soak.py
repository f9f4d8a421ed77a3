"""`make soak`, shortened: one pod kill and one epp restart under load, in about 30 s.

Runs ``python -m benchmarks.soak`` as `make soak` does (its own Envoy, epp and pod
processes) and reads its JSON report. Requests are long enough (200 output tokens, about
1.4 s) that several are in flight on the killed pod, so the kill is seen in the failure
classes; only counts are checked, never times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_a_short_soak_loses_nothing_unexpectedly_and_sees_each_fault(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    argv = [
        sys.executable,
        "-m",
        "benchmarks.soak",
        "--duration",
        "25s",
        "--pods",
        "2",
        "--kills",
        "1",
        "--down-for",
        "3s",
        "--rate",
        "8",
        "--max-tokens",
        "200",
        "--rss-interval",
        "1s",
        "--log-dir",
        str(tmp_path / "logs"),
        "--out",
        str(report_path),
    ]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=280)
    output = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-3000:]}"
    assert report_path.exists(), output
    report = json.loads(report_path.read_text())
    requests = report["requests"]
    assert requests["unexpected"] == 0, json.dumps(report["unexpected"][:5], indent=1)
    assert run.returncode == 0, output
    assert report["passed"] and report["reasons"] == []
    assert "| unexpected | 0 |" in run.stdout and run.stdout.rstrip().endswith(
        f"wrote {report_path}"
    )

    # Every request is accounted for, and each fault shows in its own class.
    assert requests["total"] == requests["ok"] + requests["pod_killed"] + requests["epp_restart"]
    assert requests["ok"] > 0
    assert requests["pod_killed"] > 0
    assert requests["epp_restart"] > 0
    kinds = [event["kind"] for event in report["events"]]
    for kind in (
        "pod_kill",
        "pod_start",
        "pod_ready",
        "epp_stop",
        "epp_exit",
        "epp_start",
        "epp_ready",
    ):
        assert kinds.count(kind) == 1, kinds

    (kill,) = report["recovery"]["pod_kills"]
    assert (
        kill["failed"] + report["recovery"]["pod_kill_failures_without_pod"]
        == requests["pod_killed"]
    )
    # The restarted pod served again: a response named it in x-sim-pod.
    assert kill["serves_again_s"] is not None
    (restart,) = report["recovery"]["epp_restarts"]
    assert restart["exit_code"] == "0"  # SIGTERM ends epp cleanly
    assert restart["failed"] == requests["epp_restart"]
    assert restart["succeed_again_s"] is not None

    rss = report["rss"]
    assert [epp["incarnation"] for epp in rss["epp"]] == [0, 1]
    assert all(epp["samples"] > 0 for epp in rss["epp"]) and rss["envoy"]["samples"] > 0
