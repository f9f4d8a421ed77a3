"""How often one endpoint's ``/metrics`` is polled: every ``interval_s``, less often while
its scrapes fail or while it is idle.

**Back-off.** After the n-th failure in a row the next poll starts
``interval_s * 2**(n-1)`` after the last one began, capped at ``max_backoff_s``: after 1,
2, 3, 4, 5 failures 50, 100, 200, 400, 800 ms, then 1 s. So a pod whose every scrape
fails costs one scrape a second, not twenty. The first retry keeps the normal pace: one
lost poll is usually a blip, and readiness (``unready_after_failures``) counts on prompt
retries; three failures take 150 ms instead of 100. The cap is how late a recovered pod
can be noticed, since its first successful scrape makes it ready again: by default the
smaller of 1 s and half the staleness threshold (:func:`default_max_backoff_s`), so a
recovered pod is back within a second and every staleness window holds at least two
polls. A success resets the pace at once.

**Idle.** An endpoint that is idle (nothing waiting or running, no request from epp in
flight, and the same KV-cache use as last time) is polled ``interval_s`` apart twice,
then doubling up to ``max_idle_interval_s`` (by default twice the interval, 100 ms; up
to the back-off cap is reasonable). Any sign of work puts it back on ``interval_s`` at
the next poll, and the scraper's watcher does so within one interval when epp routes a
request to it. The cap is how late epp notices work that reaches an idle pod past it
(another epp replica, a client that calls the pod directly): 100 ms by default, so an
idle fleet of 256 pods costs about half the polls without routing on a picture older
than two intervals.

>>> pace = ScrapePace(interval_s=0.05, max_backoff_s=1.0, max_idle_interval_s=0.1)
>>> [pace.after_failures(n) for n in range(7)]
[0.05, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
>>> [pace.while_idle(n) for n in range(4)]
[0.05, 0.05, 0.1, 0.1]
"""

from __future__ import annotations

from dataclasses import dataclass

from epp.datalayer.endpoint import DEFAULT_STALENESS_S

__all__ = [
    "ScrapePace",
    "default_max_backoff_s",
    "default_max_idle_interval_s",
    "default_timeout_s",
]

_MAX_DOUBLINGS = 32  # 2**32 intervals is past any cap; the exponent cannot overflow


def default_timeout_s(interval_s: float) -> float:
    """The per-poll timeout used when none is given: ``min(1.0, max(0.5, interval_s))``.

    At least 0.5 s, because a busy model server answers ``/metrics`` from the same event
    loop that streams tokens and can be 100+ ms late without being unhealthy. At most 1 s,
    so a hung server counts as failing (and is logged) well before its data goes stale at
    2 s. Between the two it follows the interval.
    """
    return min(1.0, max(0.5, interval_s))


def default_max_idle_interval_s(interval_s: float) -> float:
    """The longest pause between polls of an idle endpoint when none is given:
    ``2 * interval_s``."""
    return 2 * interval_s


def default_max_backoff_s(staleness_s: float = DEFAULT_STALENESS_S) -> float:
    """The longest pause between polls of a failing endpoint: ``min(1.0, staleness_s / 2)``.

    It is also the longest a pod that recovers waits to be noticed. One second is well
    under what a client would notice; half the staleness threshold keeps at least two
    polls in every window after which metrics count as stale.
    """
    return min(1.0, staleness_s / 2)


@dataclass(frozen=True, slots=True)
class ScrapePace:
    """Seconds from the start of one poll to the start of the next. A cap at or below
    ``interval_s`` turns its slower pace off."""

    interval_s: float
    max_backoff_s: float
    max_idle_interval_s: float

    def after_failures(self, failures: int) -> float:
        """After ``failures`` failed scrapes in a row."""
        return self._doubling(failures, self.max_backoff_s)

    def while_idle(self, idle_polls: int) -> float:
        """After ``idle_polls`` successful polls in a row found the endpoint idle."""
        return self._doubling(idle_polls, self.max_idle_interval_s)

    def _doubling(self, count: int, cap_s: float) -> float:
        if count <= 1:
            return self.interval_s
        slower = self.interval_s * 2.0 ** min(count - 1, _MAX_DOUBLINGS)
        return max(self.interval_s, min(cap_s, slower))
