"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics.

Candidates try to take the Lease every ``retry_period_s``; it is free when it has no
holder or when its record has not changed for ``lease_duration_s`` as timed on *this*
process's clock (so clocks need not agree across pods). The leader renews every
``retry_period_s`` and steps down when it has not renewed for ``renew_deadline_s``.
Writes carry the resourceVersion they read, so two candidates cannot both win: the API
server refuses the second with 409 Conflict. On shutdown the leader releases the Lease
(empty holder), so a standby takes over within one retry period instead of a whole
lease duration.

Only readiness depends on leadership: every replica keeps its informers and scrapes
warm, and the Service sends Envoy to the ready one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

__all__ = ["LeaderElector"]

log = logging.getLogger(__name__)


class LeaderElector:
    """Runs the election in a task; ``is_leader`` says where this replica stands.

    ``on_change(is_leader)`` is called on the event loop whenever that flips.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str,
        lease_name: str,
        identity: str,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if not retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError("need retry period < renew deadline < lease duration")
        self._client = client
        self._namespace = namespace
        self._lease_name = lease_name
        self.identity = identity
        self._lease_duration_s = lease_duration_s
        self._renew_deadline_s = renew_deadline_s
        self._retry_period_s = retry_period_s
        self._on_change = on_change
        self.is_leader = False
        self._observed: tuple[Any, ...] | None = None  # the holder record last seen
        self._observed_at = 0.0  # monotonic time it was first seen
        self._last_renewal = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"leader election {self._lease_name}")

    async def stop(self) -> None:
        """Stop campaigning; a leader releases the Lease for a quick hand-over."""
        # Python 3.11's wait_for can swallow a cancel that lands as the call it waits on
        # completes; the loop then ends at its next turn, on this flag, instead of never.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self.is_leader:
            await self._release()
            self._set_leader(False)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                acquired = await asyncio.wait_for(
                    self._try_acquire_or_renew(), timeout=self._retry_period_s * 2
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API server is unreachable, or refused us
                log.debug("lease %s: %s: %s", self._lease_name, type(exc).__name__, exc)
                acquired = False
            now = time.monotonic()
            if acquired:
                self._last_renewal = now
                self._set_leader(True)
            elif self.is_leader and now - self._last_renewal >= self._renew_deadline_s:
                log.warning(
                    "lease %s: could not renew for %.1fs; stepping down",
                    self._lease_name,
                    now - self._last_renewal,
                )
                self._set_leader(False)
            await asyncio.sleep(self._retry_period_s)

    def _set_leader(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        log.info(
            "lease %s/%s: %s is %s",
            self._namespace,
            self._lease_name,
            self.identity,
            "now the leader" if leader else "no longer the leader",
        )
        if self._on_change is not None:
            self._on_change(leader)

    async def _try_acquire_or_renew(self) -> bool:
        now_text = _micro_time()
        try:
            lease = await self._client.get(Lease, self._lease_name, namespace=self._namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            await self._client.create(
                Lease(
                    metadata=ObjectMeta(name=self._lease_name, namespace=self._namespace),
                    spec=self._spec(acquire_time=now_text, renew_time=now_text, transitions=0),
                )
            )
            self._observe(None)
            return True
        spec = lease.spec or LeaseSpec()
        record = (
            spec.holderIdentity,
            spec.renewTime,
            spec.leaseDurationSeconds,
            spec.leaseTransitions,
        )
        self._observe(record)
        holder = spec.holderIdentity or ""
        if holder and holder != self.identity:
            duration = spec.leaseDurationSeconds or self._lease_duration_s
            if time.monotonic() - self._observed_at < duration:
                return False  # held by another replica that renewed recently enough
        transitions = spec.leaseTransitions or 0
        lease.spec = self._spec(
            acquire_time=spec.acquireTime if holder == self.identity else now_text,
            renew_time=now_text,
            transitions=transitions if holder == self.identity else transitions + 1,
        )
        await self._client.replace(lease)  # 409 if someone else wrote since our read
        return True

    def _observe(self, record: tuple[Any, ...] | None) -> None:
        if record != self._observed or self._observed_at == 0.0:
            self._observed = record
            self._observed_at = time.monotonic()

    def _spec(self, *, acquire_time: Any, renew_time: Any, transitions: int) -> LeaseSpec:
        return LeaseSpec(
            holderIdentity=self.identity,
            leaseDurationSeconds=max(1, round(self._lease_duration_s)),
            acquireTime=acquire_time,
            renewTime=renew_time,
            leaseTransitions=transitions,
        )

    async def _release(self) -> None:
        try:
            lease = await asyncio.wait_for(
                self._client.get(Lease, self._lease_name, namespace=self._namespace),
                timeout=self._retry_period_s,
            )
            if lease.spec is None or lease.spec.holderIdentity != self.identity:
                return
            lease.spec.holderIdentity = None
            lease.spec.leaseDurationSeconds = 1
            await asyncio.wait_for(self._client.replace(lease), timeout=self._retry_period_s)
            log.info("lease %s: released", self._lease_name)
        except Exception as exc:  # best effort: the lease expires on its own anyway
            log.warning("lease %s: could not release: %s", self._lease_name, exc)


def _micro_time() -> datetime:
    return datetime.now(UTC)
