"""Endpoints other routers expect of a model server (filled in for issue 3's peers)."""

from __future__ import annotations

from aiohttp import web

__all__ = ["add_peer_routes"]


def add_peer_routes(app: web.Application, *, models: tuple[str, ...], name: str) -> None:
    """Register the extra routes peer routers call on their workers."""
