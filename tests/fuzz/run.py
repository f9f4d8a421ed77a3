"""``make fuzz``: the fuzz suite at a large budget, with a report.

    python -m tests.fuzz.run [--streams N] [--requests N] [--seed S] [--out PATH]

Runs ``pytest tests/fuzz`` in campaign mode (every violation counted, none stops the
run) with enough examples for at least ``--streams`` ext_proc streams and ``--requests``
HTTP requests, then prints what was sent, the outcomes by class, crashes (INTERNAL or
UNKNOWN statuses, 500s with empty bodies), hangs, tracebacks in epp's log, epp's RSS
before and after, and the seed; the same as JSON in ``--out`` (default
``benchmarks/results/fuzz-<timestamp>.json``, which git ignores). Exits 1 when any
property broke, 2 when the suite itself failed to run.

Replay a run with its seed: ``python -m tests.fuzz.run --seed S`` and the same counts,
or a short strict run (Hypothesis then shrinks each failure to a minimal example):
``EPP_FUZZ_SEED=S .venv/bin/python -m pytest tests/fuzz``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXTPROC_PROPERTIES = 4  # tests in test_extproc_fuzz.py
HTTP_PROPERTIES = 2  # test_http_through_envoy_full_duplex and _buffered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--streams",
        type=int,
        default=100_000,
        help="ext_proc streams to send, at least (default 100000)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=10_000,
        help="HTTP requests to send through Envoy, at least (default 10000)",
    )
    parser.add_argument("--streams-per-example", type=int, default=32)
    parser.add_argument("--requests-per-example", type=int, default=24)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or ROOT / "benchmarks" / "results" / f"fuzz-{stamp}.json"
    raw = out.with_suffix(".tally.json")
    env = {
        **os.environ,
        "EPP_FUZZ_MODE": "campaign",
        "EPP_FUZZ_SEED": str(seed),
        "EPP_FUZZ_STREAMS": str(args.streams_per_example),
        "EPP_FUZZ_REQUESTS": str(args.requests_per_example),
        "EPP_FUZZ_EXAMPLES": str(
            math.ceil(args.streams / (EXTPROC_PROPERTIES * args.streams_per_example))
        ),
        "EPP_FUZZ_HTTP_EXAMPLES": str(
            math.ceil(args.requests / (HTTP_PROPERTIES * args.requests_per_example))
        ),
        "EPP_FUZZ_REPORT": str(raw),
    }
    print(
        f"epp fuzz campaign: seed {seed}; {env['EPP_FUZZ_EXAMPLES']} examples x "
        f"{args.streams_per_example} streams per ext_proc property, "
        f"{env['EPP_FUZZ_HTTP_EXAMPLES']} x {args.requests_per_example} requests per HTTP "
        f"property",
        flush=True,
    )
    started = time.monotonic()
    pytest = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/fuzz",
            "-q",
            "-p",
            "no:cacheprovider",
            "--timeout=0",
        ],
        cwd=ROOT,
        env=env,
        check=False,
    )
    if not raw.exists():
        print(f"the fuzz suite wrote no tally (pytest exit {pytest.returncode})")
        return 2
    tally = json.loads(raw.read_text())
    raw.unlink()
    report = summarize(
        tally, seed=seed, pytest_exit=pytest.returncode, wall_s=time.monotonic() - started
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_report(report)
    print(f"\nreport: {out}")
    if pytest.returncode not in (0, 1):
        return 2
    return 1 if report["failures"] else 0


def summarize(
    tally: dict[str, Any], *, seed: int, pytest_exit: int, wall_s: float
) -> dict[str, Any]:
    outcomes: dict[str, int] = tally["outcomes"]
    violations: dict[str, Any] = tally["violations"]
    streams = sum(n for k, n in tally["sent"].items() if k.startswith("extproc"))
    requests = sum(n for k, n in tally["sent"].items() if k.startswith("http"))
    internal = sum(
        n
        for k, n in outcomes.items()
        if k.startswith("extproc: INTERNAL") or k.startswith("extproc: UNKNOWN")
    )
    hangs = sum(n for k, n in outcomes.items() if k.endswith(": hang"))
    empty_500 = sum(v["count"] for k, v in violations.items() if k.endswith("empty_500"))
    epp = tally["epp"]
    return {
        "seed": seed,
        "replay": f"python -m tests.fuzz.run --seed {seed} (or EPP_FUZZ_SEED={seed} with "
        f"{tally['settings'].get('replay', '')})",
        "wall_s": round(wall_s, 1),
        "pytest_exit": pytest_exit,
        "streams_sent": streams,
        "http_requests_sent": requests,
        "crashes": {"internal_or_unknown_status": internal, "empty_500": empty_500},
        "hung": hangs,
        "epp_tracebacks": epp.get("tracebacks", 0) - epp.get("tracebacks_at_start", 0),
        "epp_rss_kib": {"before": epp.get("rss_kib_before"), "after": epp.get("rss_kib_after")},
        "epp_stream_errors": {
            "before": epp.get("stream_errors_before"),
            "after": epp.get("stream_errors_after"),
        },
        "epp_exceptions": epp.get("exceptions", {}),
        "epp_alive_at_end": epp.get("alive_at_end"),
        "epp_exit_codes": epp.get("exit_codes"),
        "violations_by_property": {k: v["count"] for k, v in violations.items()},
        "violation_kinds": tally.get("violation_kinds", {}),
        "failures": tally["failures"],
        "outcomes": outcomes,
        "families": tally["families"],
        "settings": tally["settings"],
        "violations": violations,
        "epp_error_lines": epp.get("error_lines", []),
        "epp_traceback_examples": epp.get("traceback_examples", {}),
    }


def print_report(report: dict[str, Any]) -> None:
    print("\n==== epp fuzz report ====")
    for key in (
        "seed",
        "wall_s",
        "streams_sent",
        "http_requests_sent",
        "crashes",
        "hung",
        "epp_tracebacks",
        "epp_exceptions",
        "epp_rss_kib",
        "epp_stream_errors",
        "epp_alive_at_end",
        "failures",
    ):
        print(f"{key}: {report[key]}")
    print("outcomes:")
    for outcome, count in report["outcomes"].items():
        print(f"  {count:8d}  {outcome}")
    if report["violation_kinds"]:
        print("violations by kind:")
        for kind, count in report["violation_kinds"].items():
            print(f"  {count:8d}  {kind}")
    print("violations by property:" if report["violations_by_property"] else "violations: none")
    for name, count in report["violations_by_property"].items():
        example = report["violations"][name]["smallest_examples"][0]
        print(f"  {count:8d}  {name}\n            e.g. {example['problem'][:300]}")


if __name__ == "__main__":
    sys.exit(main())
