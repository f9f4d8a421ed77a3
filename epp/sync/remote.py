"""What the other replicas report: their in-flight counts per endpoint, and when each was
last heard from. Pure bookkeeping (no I/O), applied to the endpoints of this replica's
store through :meth:`~epp.datalayer.endpoint.Endpoint.set_remote_inflight`.

A replica not heard from for ``expire_s`` (crashed, partitioned, or this replica lost
the shared engine) is forgotten: its counts leave the endpoints, so load it can no longer
vouch for never holds a pod back for long. Counts are kept only for endpoints this
replica knows (a hostile or confused publisher cannot grow memory with made-up
addresses), and for at most ``max_replicas`` replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from epp.datalayer.endpoint import Endpoint

__all__ = ["DEFAULT_MAX_REPLICAS", "RemoteLoad"]

DEFAULT_MAX_REPLICAS = 256


@dataclass(slots=True)
class _Replica:
    heard_at: float
    counts: dict[str, int] = field(default_factory=dict)


class RemoteLoad:
    """The other replicas' in-flight counts, summed per endpoint onto the endpoints.

    ``endpoint_of`` finds this replica's endpoint by address (None: unknown here).
    Not thread-safe: call it from the event loop.
    """

    def __init__(
        self,
        endpoint_of: Callable[[str], Endpoint | None],
        *,
        expire_s: float,
        max_replicas: int = DEFAULT_MAX_REPLICAS,
    ) -> None:
        self._endpoint_of = endpoint_of
        self._expire_s = expire_s
        self._max_replicas = max_replicas
        self._replicas: dict[str, _Replica] = {}
        self.refused_replicas = 0  # batches from replicas past max_replicas

    def replicas(self) -> list[str]:
        """The replicas heard from within ``expire_s``."""
        return list(self._replicas)

    def counts_of(self, replica: str) -> dict[str, int]:
        known = self._replicas.get(replica)
        return dict(known.counts) if known is not None else {}

    def heard(self, replica: str, now: float) -> bool:
        """Note that ``replica`` spoke at ``now``; False when it is one too many to track."""
        known = self._replicas.get(replica)
        if known is None:
            if len(self._replicas) >= self._max_replicas:
                self.refused_replicas += 1
                return False
            self._replicas[replica] = _Replica(now)
        else:
            known.heard_at = now
        return True

    def apply(self, replica: str, counts: Mapping[str, int], *, full: bool, now: float) -> bool:
        """``replica`` reports these counts now; with ``full``, every endpoint it leaves
        out has 0. False when the replica is one too many to track."""
        if not self.heard(replica, now):
            return False
        own = self._replicas[replica].counts
        changed = set(counts)
        if full:
            changed.update(own)
            own.clear()
        for address, count in counts.items():
            if count and self._endpoint_of(address) is not None:
                own[address] = count
            else:
                own.pop(address, None)
        self._refresh(changed)
        return True

    def forget(self, replica: str) -> None:
        """Drop ``replica`` and its counts (it said goodbye, or went quiet)."""
        gone = self._replicas.pop(replica, None)
        if gone is not None:
            self._refresh(gone.counts)

    def expire(self, now: float) -> list[str]:
        """Forget the replicas not heard from for ``expire_s``; returns their ids."""
        quiet = [r for r, known in self._replicas.items() if now - known.heard_at > self._expire_s]
        for replica in quiet:
            self.forget(replica)
        return quiet

    def forget_all(self) -> None:
        for replica in list(self._replicas):
            self.forget(replica)

    def endpoints_added(self, endpoints: Iterable[Endpoint]) -> None:
        """New endpoint objects start at 0: give them what is already known."""
        self._refresh(ep.address for ep in endpoints)

    def _refresh(self, addresses: Iterable[str]) -> None:
        for address in addresses:
            endpoint = self._endpoint_of(address)
            if endpoint is not None:
                total = sum(r.counts.get(address, 0) for r in self._replicas.values())
                endpoint.set_remote_inflight(total)
