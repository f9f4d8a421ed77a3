"""Rendering ``/metrics`` without holding up the event loop that routes requests.

The page is built by prometheus_client in a worker thread: the routing loop keeps its
turns (the interpreter switches threads every few milliseconds) instead of stopping for
the whole build. Scrapes that arrive while a build runs share it, so a burst of scrapes
costs one build, not one each.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

__all__ = ["MetricsPage"]


class MetricsPage:
    """The exposition of ``registry``; call :meth:`render` from the event loop."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._building: asyncio.Future[bytes] | None = None

    async def render(self) -> bytes:
        building = self._building
        if building is None:
            building = self._building = asyncio.ensure_future(
                asyncio.to_thread(generate_latest, self._registry)
            )
            building.add_done_callback(self._built)
        # A scraper that gives up must not cancel the build the others wait for.
        return await asyncio.shield(building)

    def _built(self, _done: asyncio.Future[bytes]) -> None:
        self._building = None
