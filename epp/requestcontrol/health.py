"""Passive endpoint health: an endpoint whose requests fail is avoided for a while.

A request fails when its response status is 5xx: the model server's own, or the 503 (or
504) Envoy answers with when it cannot connect to the endpoint, loses the connection
before a response, or times out. The first failure ejects the endpoint for
``initial_backoff_s``; each ejection after that without a success in between doubles the
back-off, up to ``max_backoff_s``. When the back-off ends the endpoint takes traffic
again; one success of a request routed after the latest ejection heals it (and ends a
back-off early, for a request routed there because nothing healthier was left).

Evidence is counted once: failures of requests routed before the latest ejection, or
that arrive while the endpoint is already ejected, say nothing new, so the burst of
failures of one outage ejects the endpoint once. A stream that ends without a response
(the client went away first) counts neither way, and neither does a response that
started well and was then cut off: ext_proc cannot tell that from a client hanging up.

    health = PassiveHealth(initial_backoff_s=1.0, max_backoff_s=30.0)
    ticket = health.generation(endpoint)      # when the request is routed there
    health.record(endpoint, ticket, 503)      # ejected for 1 s
    health.in_backoff(endpoint)               # True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from epp.datalayer.endpoint import Endpoint
from epp.observability import metrics

__all__ = ["PassiveHealth", "is_failure"]

log = logging.getLogger(__name__)

# 2**30 back-offs are far past any sensible max_backoff_s; the cap keeps the power small.
_MAX_DOUBLINGS = 30


def is_failure(status: int) -> bool:
    """A response status that counts against the endpoint (429 and 4xx do not: the
    endpoint answered, it is the request or the load that was refused)."""
    return status >= 500


@dataclass(slots=True)
class _State:
    generation: int = 0  # ejections so far; a routed request remembers the one it saw
    strikes: int = 0  # ejections since the last success: the back-off's exponent
    until: float = 0.0  # clock reading at which the current back-off ends


class PassiveHealth:
    """Back-off state per endpoint, fed with the outcomes of the requests routed there.

    ``initial_backoff_s`` 0 turns passive health off: nothing is ever ejected.
    Not thread-safe; like the rest of the request path it runs on one event loop.
    """

    def __init__(
        self,
        *,
        initial_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if initial_backoff_s < 0 or max_backoff_s < initial_backoff_s:
            raise ValueError("back-offs must satisfy 0 <= initial <= max")
        self._initial_s = initial_backoff_s
        self._max_s = max_backoff_s
        self._clock = clock
        # Only endpoints that have failed at least once have an entry.
        self._states: dict[Endpoint, _State] = {}
        # The latest end of any back-off ever begun: before it, some endpoint may be in
        # one; after it, none is (a back-off cut short by a success only ends sooner).
        self._backoffs_end = 0.0

    def in_backoff(self, endpoint: Endpoint) -> bool:
        state = self._states.get(endpoint)
        return state is not None and self._clock() < state.until

    def any_in_backoff(self) -> bool:
        """False when no endpoint is in a back-off now; True when one may be."""
        return self._clock() < self._backoffs_end

    def generation(self, endpoint: Endpoint) -> int:
        """The ticket a request routed to ``endpoint`` now hands back to :meth:`record`."""
        state = self._states.get(endpoint)
        return 0 if state is None else state.generation

    def record(self, endpoint: Endpoint, generation: int, status: int) -> None:
        """The response to a request routed to ``endpoint`` with ticket ``generation``
        started with ``status``."""
        state = self._states.get(endpoint)
        if not is_failure(status):
            if state is not None and state.strikes and generation == state.generation:
                state.strikes = 0
                state.until = 0.0
                log.info(
                    "endpoint %s answered again (status %d); healthy", endpoint.address, status
                )
            return
        if self._initial_s <= 0:
            return
        if state is None:
            state = self._states[endpoint] = _State()
        now = self._clock()
        if generation != state.generation or now < state.until:
            return  # routed before the latest ejection, or ejected already: nothing new
        backoff_s = min(self._initial_s * 2 ** min(state.strikes, _MAX_DOUBLINGS), self._max_s)
        state.until = now + backoff_s
        self._backoffs_end = max(self._backoffs_end, state.until)
        state.strikes += 1
        state.generation += 1
        metrics.ENDPOINT_EJECTIONS.inc()
        log.warning(
            "endpoint %s failed a request (status %d); avoiding it for %.1fs "
            "(ejection %d in a row)",
            endpoint.address,
            status,
            backoff_s,
            state.strikes,
        )

    def forget(self, endpoints: Iterable[Endpoint]) -> None:
        """Drop the state of endpoints that left the pool."""
        for endpoint in endpoints:
            self._states.pop(endpoint, None)
