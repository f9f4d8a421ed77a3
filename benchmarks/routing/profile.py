"""Sample a router process with py-spy while the benchmark's load runs; summarise where
its CPU goes.

``python -m benchmarks.routing.run --profile ...`` records every epp process of every
run (py-spy ``record --format raw``: one line per distinct stack, ``frame;frame;... N``)
into the run's work folder and puts the top entries into the results. The same command
by hand, against any running epp::

    py-spy record -p PID -r 100 -d 15 -f speedscope -o epp.speedscope.json   # --native: C frames

Only stacks that were running are sampled (``--idle`` is off), so the shares are of the
CPU the process used, not of wall time.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Profile", "Sampler", "group_of", "summarize_raw"]

# Where a frame's file lives says which layer the time belongs to; first match wins.
GROUPS: tuple[tuple[str, str], ...] = (
    ("grpc/_cython", "grpc.aio"),
    ("grpc/aio", "grpc.aio"),
    ("grpc/", "grpc.aio"),
    ("google/protobuf", "protobuf"),
    ("uvloop", "event loop"),
    ("asyncio/", "event loop"),
    ("epp/datalayer", "epp data layer (scraping)"),
    ("aiohttp", "aiohttp (scraping, /metrics)"),
    ("epp/scheduling", "epp scheduling"),
    ("epp/api", "epp parsing"),
    ("epp/extproc", "epp ext_proc"),
    ("epp/observability", "epp metrics"),
    ("prometheus_client", "epp metrics"),
    ("epp/", "epp other"),
)


def group_of(frame: str) -> str:
    """The layer a py-spy frame ("function (path/file.py:line)") belongs to."""
    for needle, group in GROUPS:
        if needle in frame:
            return group
    return "other"


@dataclass(frozen=True, slots=True)
class Profile:
    samples: int
    by_group: dict[str, float]  # share of samples whose innermost frame is in the group
    top_self: list[tuple[str, float]]  # innermost frames, share of samples
    top_total: list[tuple[str, float]]  # frames anywhere on the stack, share of samples

    def as_json(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "by_group": {k: round(v, 4) for k, v in self.by_group.items()},
            "top_self": [[f, round(s, 4)] for f, s in self.top_self],
            "top_total": [[f, round(s, 4)] for f, s in self.top_total],
        }

    def text(self) -> str:
        lines = [f"{self.samples} samples; innermost frame by layer:"]
        lines += [f"  {100 * share:5.1f} %  {group}" for group, share in self.by_group.items()]
        lines.append("top functions by own time:")
        lines += [f"  {100 * share:5.1f} %  {frame}" for frame, share in self.top_self]
        lines.append("top functions by time under them:")
        lines += [f"  {100 * share:5.1f} %  {frame}" for frame, share in self.top_total]
        return "\n".join(lines)


def summarize_raw(lines: Iterable[str], top: int = 15) -> Profile:
    """Summarise py-spy's raw (collapsed stack) output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    samples = 0
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # The first frame is the thread ("process PID:"/"thread ..."), not code.
        code = [f for f in frames if "(" in f] or frames
        samples += count
        own[code[-1]] += count
        groups[group_of(code[-1])] += count
        for frame in set(code):
            total[frame] += count
    if not samples:
        return Profile(0, {}, [], [])

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, n / samples) for frame, n in counter.most_common(top)]

    return Profile(samples, dict(shares(groups)), shares(own), shares(total))


class Sampler:
    """``py-spy record`` of one process, from ``start`` until ``stop``."""

    def __init__(self, pid: int, out: Path, *, rate_hz: int = 100) -> None:
        self.out = out
        self.pid = pid
        self.rate_hz = rate_hz
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Installed beside this interpreter (the bench extra) even when its bin/ is not on PATH.
        binary = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy, or the bench extra)")
        self._process = subprocess.Popen(
            [
                binary,
                "record",
                "-p",
                str(self.pid),
                "-r",
                str(self.rate_hz),
                "-f",
                "raw",
                "-o",
                str(self.out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> Profile | None:
        """Stop sampling (py-spy writes its file on SIGINT) and summarise it."""
        process, self._process = self._process, None
        if process is None:
            return None
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        try:
            with self.out.open() as raw:
                return summarize_raw(raw)
        except OSError:
            return None
