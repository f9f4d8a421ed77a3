"""How much the fuzz suite does, read once from the environment.

    EPP_FUZZ_EXAMPLES        Hypothesis examples per ext_proc property (default 40)
    EPP_FUZZ_HTTP_EXAMPLES   Hypothesis examples per HTTP property (default 12; each waits
                             about a second for Envoy to close malformed connections)
    EPP_FUZZ_STREAMS         ext_proc streams per example, sent concurrently (default 8)
    EPP_FUZZ_REQUESTS        HTTP requests per example, sent concurrently (default 6)
    EPP_FUZZ_SEED            the Hypothesis seed (default: drawn at random, then printed)
    EPP_FUZZ_MODE            "strict" (default): a broken property fails the test and
                             Hypothesis shrinks it to a minimal example; "campaign": every
                             violation is counted into the report and the run goes on,
                             and every batch is full (so the counts are exact)
    EPP_FUZZ_REPORT          where to write the session's tally as JSON (default: none)
    EPP_FUZZ_CALL_TIMEOUT_S  the deadline of one stream or request; reaching it is a hang
                             (default 30)

The seed and budget are printed in pytest's header, so any run can be replayed with
``EPP_FUZZ_SEED=<seed>`` and the same counts.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from hypothesis import HealthCheck, settings

__all__ = ["BUDGET", "Budget", "fuzz_settings"]


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


@dataclass(frozen=True, slots=True)
class Budget:
    examples: int
    http_examples: int
    streams_per_example: int
    requests_per_example: int
    seed: int
    campaign: bool
    report_path: str
    call_timeout_s: float

    @classmethod
    def from_env(cls) -> Budget:
        mode = os.environ.get("EPP_FUZZ_MODE", "strict").strip() or "strict"
        if mode not in ("strict", "campaign"):
            raise ValueError(f"EPP_FUZZ_MODE must be strict or campaign, not {mode!r}")
        seed_text = os.environ.get("EPP_FUZZ_SEED", "").strip()
        return cls(
            examples=max(1, _int("EPP_FUZZ_EXAMPLES", 40)),
            http_examples=max(1, _int("EPP_FUZZ_HTTP_EXAMPLES", 12)),
            streams_per_example=max(1, _int("EPP_FUZZ_STREAMS", 8)),
            requests_per_example=max(1, _int("EPP_FUZZ_REQUESTS", 6)),
            seed=int(seed_text) if seed_text else random.SystemRandom().randrange(2**32),
            campaign=mode == "campaign",
            report_path=os.environ.get("EPP_FUZZ_REPORT", "").strip(),
            call_timeout_s=float(os.environ.get("EPP_FUZZ_CALL_TIMEOUT_S", "") or 30.0),
        )

    def batch_sizes(self, per_example: int) -> tuple[int, int]:
        """(min, max) batch size: full batches in a campaign; in strict mode a failing
        batch may shrink to one stream or request."""
        return (per_example if self.campaign else 1), per_example

    def replay_hint(self) -> str:
        return (
            f"EPP_FUZZ_SEED={self.seed} EPP_FUZZ_EXAMPLES={self.examples} "
            f"EPP_FUZZ_HTTP_EXAMPLES={self.http_examples} "
            f"EPP_FUZZ_STREAMS={self.streams_per_example} "
            f"EPP_FUZZ_REQUESTS={self.requests_per_example}"
            + (" EPP_FUZZ_MODE=campaign" if self.campaign else "")
        )


BUDGET = Budget.from_env()


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings for a property checked against the real processes: no
    deadline (a batch takes what it takes), no example database kept, and the health
    checks that large, slow, fixture-using examples would trip turned off."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
            HealthCheck.function_scoped_fixture,
        ],
    )
