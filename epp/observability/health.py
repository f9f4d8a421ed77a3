"""gRPC health (grpc.health.v1) for Kubernetes probes and Envoy.

Readiness means "send me traffic": the endpoint view is complete (the pool has synced)
and, with leader election, this replica leads. It is reported under the service names
probes and gateways ask for: "" (overall), ``inference-extension`` (the reference EPP's
probe service), ``readiness`` and the ext_proc service name. ``liveness`` is SERVING
while the process answers at all, so a standby replica is not restarted for not leading
(with leader election, point the liveness probe at ``service: liveness``).
"""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health, health_pb2

__all__ = ["READINESS_SERVICES", "HealthReporter"]

READINESS_SERVICES = (
    "",
    "inference-extension",
    "readiness",
    "envoy.service.ext_proc.v3.ExternalProcessor",
)
LIVENESS_SERVICE = "liveness"

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """Holds the inputs to readiness and pushes the result to the health servicer."""

    def __init__(self, servicer: health.aio.HealthServicer, *, needs_leadership: bool) -> None:
        self.servicer = servicer
        self.synced = False
        self.leader = not needs_leadership
        self.stopping = False
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        return self.synced and self.leader and not self.stopping

    async def publish(self) -> None:
        status = _SERVING if self.ready else _NOT_SERVING
        for service in READINESS_SERVICES:
            await self.servicer.set(service, status)
        await self.servicer.set(LIVENESS_SERVICE, _SERVING)

    def update(self, **state: bool) -> None:
        """Change ``synced``/``leader``/``stopping`` from synchronous code (a callback)."""
        for name, value in state.items():
            setattr(self, name, value)
        task = asyncio.get_running_loop().create_task(self.publish())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
