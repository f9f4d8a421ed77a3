"""Endpoints other routers expect of a model server, so issue 3's peer routers can run.

Found by pointing each router at simulated pods that logged every request, 404s included,
and by reading the routers' sources. sglang-router 0.3.2 and vllm-router 0.1.17 (policy
``cache_aware``, HTTP workers) call:

- ``GET /health``: both, at start and every 60 s (served by ``vllm_sim.server``);
- ``GET /server_info``, then ``/get_server_info`` after a 404: sglang-router, once per
  worker at registration. ``served_model_name`` becomes the worker's model id, which keys
  its cache-aware tree and its ``/v1/models``; without it the model is "unknown";
- ``GET /model_info``, then ``/get_model_info``: sglang-router, at registration;
- ``POST /v1/chat/completions/render`` (``/v1/completions/render`` for completions), then
  ``POST /tokenize`` after a 404: vllm-router, for every request on every worker, for the
  token ids its prefix tree keys on. ``vllm_sim.server`` serves these in vLLM's shapes;
- the OpenAI routes themselves, ``/v1/models`` included.

This module adds the SGLang ones, and ``GET /health_generate`` (SGLang's deeper health
check, which sglang-router can be pointed at with ``--health-check-endpoint``). Neither
info route names a ``model_path`` or ``tokenizer_path``: sglang-router would load a
tokenizer from either (from the Hugging Face hub for a bare name), and its HTTP
cache-aware routing needs none. A route the application already has is left alone.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

__all__ = ["SIM_VERSION", "add_peer_routes"]

SIM_VERSION = "epp-sim"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_response(payload: Any) -> web.Response:
    return web.Response(
        body=json.dumps(payload, separators=(",", ":")).encode(), content_type="application/json"
    )


class _PeerApi:
    def __init__(self, models: tuple[str, ...], name: str) -> None:
        if not models:
            raise ValueError("a pod serves at least one model")
        self.models = models
        self.name = name

    async def server_info(self, request: web.Request) -> web.StreamResponse:
        # SGLang's answer is its whole ServerArgs; sglang-router reads served_model_name,
        # model_path, tp_size, dp_size and a few PD fields, all optional.
        return _json_response(
            {
                "served_model_name": self.models[0],
                "tp_size": 1,
                "dp_size": 1,
                "version": SIM_VERSION,
                "sim_pod": self.name,
                "sim_models": list(self.models),
            }
        )

    async def model_info(self, request: web.Request) -> web.StreamResponse:
        return _json_response({"is_generation": True, "model_type": None, "architectures": None})

    async def health_generate(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)


def _registered(app: web.Application) -> set[tuple[str, str]]:
    taken: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.resource is not None:
            taken.add((route.method, route.resource.canonical))
    return taken


def add_peer_routes(app: web.Application, *, models: tuple[str, ...], name: str) -> None:
    """Register the extra routes peer routers call on their workers.

    ``models`` are the pod's models, the first being the one it reports as served;
    ``name`` is the pod's name. A (method, path) ``app`` already serves is skipped.
    """
    api = _PeerApi(tuple(models), name)
    routes: list[tuple[str, str, _Handler]] = [
        ("GET", "/server_info", api.server_info),
        ("GET", "/get_server_info", api.server_info),
        ("GET", "/model_info", api.model_info),
        ("GET", "/get_model_info", api.model_info),
        ("GET", "/health_generate", api.health_generate),
    ]
    taken = _registered(app)
    for method, path, handler in routes:
        if (method, path) not in taken:
            app.router.add_route(method, path, handler)
