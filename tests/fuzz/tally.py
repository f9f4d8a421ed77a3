"""What a fuzz session sent, what came back, and every property it saw broken.

One ``Tally`` per process (``TALLY``); the tests add to it, the session fixture adds epp's
own figures, and ``report()`` is the JSON that ``make fuzz`` prints and keeps.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TALLY", "Tally", "problem_class"]

_CLASSES = [
    ("hang", re.compile(r"^hang|no answer within")),
    ("internal_status", re.compile(r"an exception in epp")),
    ("unexpected_status", re.compile(r"neither OK nor|ended .* though the client")),
    ("empty_500", re.compile(r"500 with an empty body")),
    ("protocol_not_enforced", re.compile(r"should fail with a client-error status")),
    ("answer_after_immediate", re.compile(r"responses after an immediate_response")),
    ("bad_header_value", re.compile(r"Envoy refuses|over Envoy's 60 KiB")),
    ("destination_outside_pool", re.compile(r"not a live pod of the pool|served by pod")),
    ("error_body_not_openai", re.compile(r"not an OpenAI error|content-type|no OpenAI")),
    ("traceback", re.compile(r"Traceback")),
    ("exception_metric", re.compile(r"reason=\"exception\"")),
    ("epp_died", re.compile(r"epp (exited|is not running)|envoy (exited|is not running)")),
    ("probe_failed", re.compile(r"^probe")),
    ("wrong_answer", re.compile(r"expected|routed to|differs|not echoed|without")),
]


def problem_class(problem: str) -> str:
    """A short name for the property a problem sentence breaks."""
    for name, pattern in _CLASSES:
        if pattern.search(problem):
            return name
    return "other"


def _kind(problem: str) -> str:
    """A problem's first line with what varies (numbers, quoted values) blanked."""
    line = problem.split("\n", 1)[0]
    line = re.sub(r"b?'[^']*'|b?\"[^\"]*\"", "…", line)
    return re.sub(r"\d+", "N", line)[:160]


@dataclass
class _Violations:
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)  # the smallest few

    def add(self, example: dict[str, Any], keep: int = 3) -> None:
        self.count += 1
        if any(e["case"] == example["case"] for e in self.examples):
            return
        self.examples.append(example)
        self.examples.sort(key=lambda e: len(e.get("case", "")))
        del self.examples[keep:]


@dataclass
class Tally:
    started_at: float = field(default_factory=time.time)
    sent: Counter[str] = field(default_factory=Counter)  # "extproc streams", "http requests"
    families: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: dict[str, _Violations] = field(default_factory=dict)
    kinds: Counter[str] = field(default_factory=Counter)  # problems, numbers and bytes blanked
    epp: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def count(self, target: str, family: str, outcome: str) -> None:
        self.sent[target] += 1
        self.families[f"{target}: {family}"] += 1
        self.outcomes[f"{target}: {outcome}"] += 1

    def violation(self, problem: str, *, case: str, outcome: str, target: str) -> None:
        name = f"{target}: {problem_class(problem)}"
        self.kinds[f"{name}: {_kind(problem)}"] += 1
        self.violations.setdefault(name, _Violations()).add(
            {"problem": problem[:3000], "case": case[:6000], "outcome": outcome}
        )

    @property
    def failures(self) -> int:
        return sum(v.count for v in self.violations.values())

    def report(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "duration_s": round(time.time() - self.started_at, 1),
            "sent": dict(self.sent),
            "families": dict(sorted(self.families.items())),
            "outcomes": dict(self.outcomes.most_common()),
            "epp": self.epp,
            "violations": {
                name: {"count": v.count, "smallest_examples": v.examples}
                for name, v in sorted(self.violations.items())
            },
            "failures": self.failures,
            "violation_kinds": dict(self.kinds.most_common(60)),
        }

    def summary_lines(self) -> list[str]:
        lines = [f"sent: {dict(self.sent)}"]
        lines += [f"  {n:7d}  {outcome}" for outcome, n in self.outcomes.most_common(40)]
        for key in (
            "rss_kib_before",
            "rss_kib_after",
            "tracebacks",
            "stream_errors_before",
            "stream_errors_after",
            "alive_at_end",
        ):
            if key in self.epp:
                lines.append(f"epp {key}: {self.epp[key]}")
        if self.violations:
            lines.append("violations:")
            for name, v in sorted(self.violations.items()):
                lines.append(f"  {v.count:7d}  {name}: {v.examples[0]['problem'][:200]}")
        else:
            lines.append("violations: none")
        return lines

    def write(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.report(), indent=2, default=str) + "\n")


TALLY = Tally()
