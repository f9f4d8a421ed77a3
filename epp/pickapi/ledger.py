"""The picks a caller has not finished yet, and their release when it never does.

Every pick counts as in flight on its endpoint until its ``Finish``. A caller that
crashes, or forgets, would leave that count up for good and steer traffic away from a
healthy pod, so a pick older than the timeout is released as if its stream had ended
with no response. Memory is bounded too: past ``max_outstanding`` the oldest pick is
released to make room (a caller leaking picks must not stop the others from routing).

One timeout for all means insertion order is deadline order: the oldest pick is the
next to expire, and one timer, armed for it, is all the bookkeeping there is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from epp.routing import RoutingDecision

__all__ = ["OutstandingPicks", "PendingPick"]


@dataclass(slots=True)
class PendingPick:
    """One pick waiting for its ``Finish``."""

    request_id: str
    decision: RoutingDecision
    received_at: float  # time.monotonic() when the Pick call arrived
    request_bytes: int
    decision_s: float  # time spent parsing and scheduling
    deadline: float = 0.0  # time.monotonic() past which it is released; set by add()


class OutstandingPicks:
    """Unfinished picks by request id, oldest first.

    ``release(pick, reason)`` is called for a pick given up on: ``"timeout"`` or
    ``"evicted"``. Within an event loop a timer releases expired picks on its own;
    :meth:`expire` does it on demand (and is what the timer calls).
    """

    def __init__(
        self,
        *,
        timeout_s: float,
        max_outstanding: int,
        release: Callable[[PendingPick, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_s <= 0 or max_outstanding < 1:
            raise ValueError("timeout_s must be > 0 and max_outstanding >= 1")
        self._timeout_s = timeout_s
        self._max = max_outstanding
        self._release = release
        self._clock = clock
        self._picks: dict[str, PendingPick] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._picks)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._picks

    def add(self, pick: PendingPick) -> None:
        """Keep ``pick`` until :meth:`take`; its id must not be outstanding already."""
        if pick.request_id in self._picks:
            raise ValueError(f"request id {pick.request_id!r} is already outstanding")
        self.expire()
        while len(self._picks) >= self._max:
            oldest = next(iter(self._picks))
            self._release(self._picks.pop(oldest), "evicted")
        pick.deadline = self._clock() + self._timeout_s
        self._picks[pick.request_id] = pick
        self._arm()

    def take(self, request_id: str) -> PendingPick | None:
        """The pick of ``request_id``, no longer outstanding; None if there is none (never
        made, already finished, or released)."""
        return self._picks.pop(request_id, None)

    def expire(self) -> int:
        """Release every pick past its deadline; how many there were."""
        now = self._clock()
        released = 0
        picks = self._picks
        while picks:
            oldest = next(iter(picks.values()))
            if oldest.deadline > now:
                break
            del picks[oldest.request_id]
            self._release(oldest, "timeout")
            released += 1
        return released

    def close(self) -> None:
        """Stop the timer (the server is stopping); the picks are left as they are."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._timer is not None or not self._picks:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a unit test): expire() is called by hand
        oldest = next(iter(self._picks.values()))
        self._timer = loop.call_later(max(0.0, oldest.deadline - self._clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.expire()
        self._arm()
