from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.routing import report


def _result() -> dict[str, Any]:
    row = {
        "ttft_p50_s": 0.1,
        "ttft_p90_s": 0.2,
        "ttft_p99_s": 0.3,
        "e2e_p50_s": 1.0,
        "e2e_p90_s": 1.5,
        "output_tps": 1234.5,
        "request_rps": 12.3,
        "hit_rate": 0.5,
        "oracle_hit_rate": 0.8,
        "pod_cv": 0.1,
        "pod_max": 13.0,
        "pod_min": 10.0,
        "errors": {},
        "router_cpu_ms_per_req": 1.5,
        "router_cpu_ms_per_req_by_process": {"epp": 1.0, "envoy": 0.5},
    }
    runs = [
        {"workload": "shared-prefix", "contender": c, "offered_rps": r, **row}
        for r in (10.0, 20.0)
        for c in ("envoy-rr", "epp")
    ]
    runs.append(
        {
            "workload": "shared-prefix",
            "contender": "peer",
            "offered_rps": 10.0,
            "oracle_hit_rate": 0.8,
            "error": "StackError: no",
        }
    )
    meta = {
        "mode": "quick",
        "pods": 8,
        "sim_args": "defaults",
        "time_scale": 2.5,
        "knee_rps": 15.0,
        "ceiling_rps": 60.0,
        "duration_s": 6.0,
        "notes": ["a note."],
    }
    return {"meta": meta, "runs": runs}


def test_markdown_has_a_row_per_run_and_the_notes() -> None:
    text = report.markdown(_result())
    assert "## shared-prefix" in text and "a note." in text
    assert "divides it by the" in text and "oracle" in text
    assert text.count("| epp |") == 2
    assert "| 1.5 (epp 1 + envoy 0.5) |" in text
    assert "failed: StackError: no" in text
    widths = {line.count("|") for line in text.splitlines() if line.startswith("| ")}
    assert len(widths) == 1  # every row has the header's columns


def test_json_round_trips(tmp_path: Path) -> None:
    report.write_json(_result(), tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == _result()


def test_plots_are_written(tmp_path: Path) -> None:
    paths = report.plot(_result(), tmp_path)
    assert [p.name for p in paths] == ["routing_ttft_p90.png", "routing_throughput.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def _rounds() -> list[dict[str, Any]]:
    cpu = {"epp": (8.0, 9.0, 10.0), "sglang-router cache_aware": (4.0, 4.0, 5.0)}
    return [
        {
            "workload": "shared-prefix",
            "contender": name,
            "offered_rps": 76.9,
            "round": index + 1,
            "router_cpu_ms_per_req": value,
        }
        for name, values in cpu.items()
        for index, value in enumerate(values)
    ]


def test_cpu_by_round_divides_within_each_round() -> None:
    rows = {r["contender"]: r for r in report.cpu_by_round(_rounds(), "sglang-router cache_aware")}
    epp = rows["epp"]
    assert epp["cpu_ms_per_req"] == [8.0, 9.0, 10.0] and epp["median"] == 9.0
    # Round by round (2, 2.25, 2), not the ratio of the medians (9 / 4 = 2.25).
    assert epp["vs_reference"] == [2.0, 2.25, 2.0] and epp["vs_reference_median"] == 2.0
    assert "vs_reference" not in rows["sglang-router cache_aware"]
    assert "vs_reference" not in report.cpu_by_round(_rounds(), None)[0]
    # A round the reference did not measure is left out of the ratios.
    partial = [r for r in _rounds() if not (r["round"] == 3 and r["contender"] != "epp")]
    assert report.cpu_by_round(partial, "sglang-router cache_aware")[0]["vs_reference"] == [
        2.0,
        2.25,
    ]


def test_markdown_labels_rounds_and_adds_the_cpu_table() -> None:
    result = _result()
    runs = result["runs"] = [
        {**r, "round": 1 + i // 2} for i, r in enumerate(result["runs"]) if "error" not in r
    ]
    result["cpu_by_round"] = report.cpu_by_round(runs, "envoy-rr")
    text = report.markdown(result)
    assert "| epp (round 2) |" in text and "| envoy-rr (round 1) |" in text
    table = text.split("## Router CPU per request, by round")[1]
    assert "/ envoy-rr, by round" in table
    assert "| shared-prefix | 10 | epp | 1.5 | 1.5 | 1 | 1 |" in table
    widths = {line.count("|") for line in table.splitlines() if line.startswith("| ")}
    assert len(widths) == 1
