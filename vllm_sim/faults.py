"""Fault injection for tests: ``/sim/faults`` on every simulated pod.

``POST /sim/faults`` with a JSON object sets faults; keys left out keep their value:

- ``"status": 503`` answers every inference request (``POST /v1/...``) with that status
  (400-599) and a vLLM-style error body, as a broken model server would, while
  ``/metrics`` and ``/health`` keep answering; ``null`` turns it off.
- ``"extra_waiting": 10`` adds 10 to the ``vllm:num_requests_waiting`` the pod reports,
  so a test can make a pool look saturated without queueing real work.

``DELETE /sim/faults`` clears every fault; ``GET`` (and every POST/DELETE) answers with
the faults now set. Real vLLM has nothing like this.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import orjson
from aiohttp import web

__all__ = ["Faults", "fault_routes"]


@dataclass(slots=True)
class Faults:
    status: int | None = None  # answer inference requests with this status
    extra_waiting: int = 0  # added to the reported waiting queue

    def update(self, document: object) -> None:
        """Apply a POSTed JSON document; raises ValueError naming a bad key or value."""
        if not isinstance(document, dict):
            raise ValueError("expected a JSON object")
        unknown = set(document) - {"status", "extra_waiting"}
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        status = document.get("status", self.status)
        if status is not None and (not _is_int(status) or not 400 <= status <= 599):
            raise ValueError(f"status must be an HTTP error status (400-599) or null: {status!r}")
        waiting = document.get("extra_waiting", self.extra_waiting)
        if not _is_int(waiting) or waiting < 0:
            raise ValueError(f"extra_waiting must be a non-negative integer: {waiting!r}")
        self.status, self.extra_waiting = status, waiting


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def fault_routes(faults: Faults) -> list[web.RouteDef]:
    """``GET``, ``POST`` and ``DELETE /sim/faults`` acting on ``faults``."""

    def current() -> web.Response:
        return web.Response(body=orjson.dumps(asdict(faults)), content_type="application/json")

    async def show(_request: web.Request) -> web.Response:
        return current()

    async def update(request: web.Request) -> web.Response:
        try:
            faults.update(orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, ValueError) as exc:
            return web.Response(status=400, text=f"{exc}\n")
        return current()

    async def clear(_request: web.Request) -> web.Response:
        faults.status, faults.extra_waiting = None, 0
        return current()

    return [
        web.get("/sim/faults", show),
        web.post("/sim/faults", update),
        web.delete("/sim/faults", clear),
    ]
