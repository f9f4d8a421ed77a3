"""The benchmark's outputs: a markdown table, a JSON file and two PNG plots."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["cpu_by_round", "markdown", "plot", "write_json"]

NOTES = """\
Times are simulated seconds: the client measures wall time and divides it by the
simulator's time scale ({time_scale}; every simulated delay is multiplied by it). Work
outside the simulator (Envoy, epp, the client) is divided by it too.
TTFT and e2e count from each request's scheduled arrival (open loop). "hit" is the
prefix-cache hit rate the pods report (hit tokens / queried tokens, summed over pods);
"oracle" is its upper bound for the workload: one infinite cache shared by every request,
in arrival order (a request's leading 16-token blocks seen in any earlier request).
"CV" (standard deviation / mean) and "max/min" are over the pods' finished requests.
"router CPU" is the user + system CPU of the router's own processes (epp and its Envoy,
Envoy alone, or a peer's whole proxy) during the run, in CPU seconds per 1,000 requests
sent (= ms per request; wall, not simulated).
Throughput divides by the time from the first arrival to the last completion (or the
time limit, after which unfinished requests count as errors: "timeout").
The machine has 2 cores for the simulator, the router and the client together: compare
contenders within one run, not across runs or machines."""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(result: Mapping[str, Any]) -> str:
    """Every workload's table, rate by rate, with the notes that explain the columns."""
    meta = result["meta"]
    lines = [f"# Routing benchmark ({meta['mode']})", ""]
    lines.append(
        f"Fleet: {meta['pods']} simulated pods ({meta['sim_args']}), time scale "
        f"{meta['time_scale']}; knee (no-hit capacity, calibrated) "
        f"{_fmt(meta['knee_rps'])} req/s, perfect-affinity ceiling "
        f"{_fmt(meta['ceiling_rps'])} req/s; {meta['duration_s']} simulated s per run."
    )
    if meta.get("client_cpu_ms_per_req_median") is not None:
        lines.append(
            f"\nClient CPU: {meta['client_cpu_ms_per_req_median']} ms per request (median over "
            f"runs); whole run {meta.get('wall_s', '?')} s wall."
        )
    for note in meta.get("notes", []):
        lines.append(f"\n{note}")
    lines.append("")
    lines.append(NOTES.format(time_scale=meta["time_scale"]))
    for workload, runs in _by_workload(result["runs"]).items():
        lines += ["", f"## {workload}", ""]
        lines.append(
            "| rate/s | contender | TTFT p50 | p90 | p99 | e2e p50 | p90 | out tok/s "
            "| req/s | hit % | oracle % | pod CV | max/min | router CPU s/1k req "
            "| errors |"
        )
        lines.append(
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
            "| ---: | ---: | ---: | ---: | --- |"
        )
        for run in runs:
            if "error" in run:
                lines.append(
                    f"| {_fmt(run['offered_rps'])} | {_label(run)} | "
                    f"failed: {run['error']} |" + " |" * 12
                )
                continue
            errors = ", ".join(f"{k} {v}" for k, v in sorted(run["errors"].items())) or "0"
            lines.append(
                f"| {_fmt(run['offered_rps'])} | {_label(run)} "
                f"| {_fmt(run['ttft_p50_s'])} | {_fmt(run['ttft_p90_s'])} "
                f"| {_fmt(run['ttft_p99_s'])} | {_fmt(run['e2e_p50_s'])} "
                f"| {_fmt(run['e2e_p90_s'])} | {_fmt(run['output_tps'], 4)} "
                f"| {_fmt(run['request_rps'])} | {_pct(run['hit_rate'])} "
                f"| {_pct(run['oracle_hit_rate'])} | {_fmt(run['pod_cv'], 2)} "
                f"| {_fmt(run['pod_max'])}/{_fmt(run['pod_min'])} "
                f"| {_cpu(run)} | {errors} |"
            )
    if result.get("cpu_by_round"):
        lines += _cpu_by_round_table(result["cpu_by_round"])
    return "\n".join(lines) + "\n"


def _label(run: Mapping[str, Any]) -> str:
    return f"{run['contender']} (round {run['round']})" if "round" in run else run["contender"]


def cpu_by_round(runs: Sequence[Mapping[str, Any]], reference: str | None) -> list[dict[str, Any]]:
    """Router CPU per request of every contender at every rate, round by round, with its
    median and, where ``reference`` ran in the same round, the ratio to it: a machine
    that drifts moves both sides of a ratio, and the median of ratios is what to quote."""
    cpu: dict[tuple[str, float, str], dict[int, float]] = {}
    for run in runs:
        value = run.get("router_cpu_ms_per_req")
        if value is not None:
            key = (run["workload"], run["offered_rps"], run["contender"])
            cpu.setdefault(key, {})[run.get("round", 1)] = value
    rows = []
    for (workload, rate, contender), by_round in cpu.items():
        row: dict[str, Any] = {
            "workload": workload,
            "offered_rps": rate,
            "contender": contender,
            "cpu_ms_per_req": [by_round[r] for r in sorted(by_round)],
            "median": round(statistics.median(by_round.values()), 3),
        }
        base = cpu.get((workload, rate, reference)) if reference else None
        if base is not None and contender != reference:
            ratios = [by_round[r] / base[r] for r in sorted(by_round) if base.get(r)]
            if ratios:
                row["reference"] = reference
                row["vs_reference"] = [round(x, 3) for x in ratios]
                row["vs_reference_median"] = round(statistics.median(ratios), 3)
        rows.append(row)
    return rows


def _cpu_by_round_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    reference = next((r["reference"] for r in rows if "reference" in r), None)
    lines = [
        "",
        "## Router CPU per request, by round",
        "",
        "ms of CPU per request (epp and its Envoy, Envoy alone, or a peer's whole proxy)"
        + (f"; ratios to {reference} in the same round." if reference else "."),
        "",
        "| workload | rate/s | contender | by round | median |"
        + (f" / {reference}, by round | median |" if reference else ""),
        "| --- | ---: | --- | --- | ---: |" + (" --- | ---: |" if reference else ""),
    ]
    for row in rows:
        line = (
            f"| {row['workload']} | {_fmt(row['offered_rps'])} | {row['contender']} "
            f"| {', '.join(_fmt(x) for x in row['cpu_ms_per_req'])} | {_fmt(row['median'])} |"
        )
        if reference:
            ratios = row.get("vs_reference")
            line += (
                f" {', '.join(_fmt(x) for x in ratios)} | {_fmt(row['vs_reference_median'])} |"
                if ratios
                else " - | - |"
            )
        lines.append(line)
    return lines


def _cpu(run: Mapping[str, Any]) -> str:
    """Router CPU per request, with the share of each process when there are several."""
    total = run.get("router_cpu_ms_per_req")
    if total is None:
        return "-"
    parts = run.get("router_cpu_ms_per_req_by_process") or {}
    if len(parts) < 2:
        return _fmt(total)
    return f"{_fmt(total)} ({' + '.join(f'{k} {_fmt(v)}' for k, v in parts.items())})"


def _by_workload(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        out.setdefault(run["workload"], []).append(run)
    return out


def write_json(result: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")


def plot(result: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """``routing_ttft_p90.png`` and ``routing_throughput.png``: one subplot per workload,
    one line per contender, against the offered rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    by_workload = _by_workload(result["runs"])
    contenders = list(dict.fromkeys(r["contender"] for r in result["runs"]))
    knees = result["meta"].get("knees_rps") or {}
    styles = ["-", "--", "-.", ":"]
    written: list[Path] = []
    for key, label, filename, log in (
        ("ttft_p90_s", "TTFT p90 (simulated s, log)", "routing_ttft_p90.png", True),
        ("output_tps", "output tokens/s (simulated)", "routing_throughput.png", False),
    ):
        n = max(1, len(by_workload))
        cols = min(n, 2)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows + 0.6), squeeze=False)
        for ax, (workload, runs) in zip(axes.flat, by_workload.items(), strict=False):
            for index, contender in enumerate(contenders):
                # One point per rate: the median of its rounds.
                values: dict[float, list[float]] = {}
                for r in runs:
                    if r["contender"] == contender and r.get(key) is not None:
                        values.setdefault(r["offered_rps"], []).append(r[key])
                points = sorted((x, statistics.median(ys)) for x, ys in values.items())
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(
                        xs,
                        ys,
                        marker="os^Dvp*hx"[index % 9],
                        markersize=5,
                        linestyle=styles[index % len(styles)],
                        label=contender,
                        color=f"C{index}",
                    )
            if key == "output_tps":
                offered = sorted(
                    {(r["offered_rps"], r["offered_tps"]) for r in runs if r.get("offered_tps")}
                )
                if offered:
                    xs, ys = zip(*offered, strict=True)
                    ax.plot(xs, ys, color="grey", linewidth=1, linestyle=":", label="offered")
            knee = knees.get(workload, result["meta"].get("knee_rps"))
            if knee:
                ax.axvline(knee, color="grey", linestyle=":", linewidth=1)
                ax.annotate(
                    " knee (no hits)",
                    (knee, 0.99),
                    xycoords=("data", "axes fraction"),
                    fontsize=8,
                    color="grey",
                    ha="left",
                    va="top",
                )
            if log:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
                ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(workload)
            ax.set_xlabel("offered rate (simulated req/s)")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(
            handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False
        )
        fig.tight_layout(rect=(0, 0.6 / (4.2 * rows + 0.6), 1, 1))
        path = out_dir / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
