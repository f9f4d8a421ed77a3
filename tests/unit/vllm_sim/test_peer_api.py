"""The worker endpoints sglang-router and vllm-router call on simulated pods."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from vllm_sim import PodSpec, SimConfig, SimFleet
from vllm_sim.peer_api import SIM_VERSION, add_peer_routes

FAST = SimConfig(time_scale=0)
# What would make sglang-router load a tokenizer (from the hub, for a bare name).
_TOKENIZER_KEYS = {"model_path", "tokenizer_path"}


@pytest.mark.asyncio
async def test_sim_pods_answer_sglang_router_registration() -> None:
    spec = PodSpec(models=("m", "lora"), name="pod-a")
    async with (
        SimFleet([spec], FAST) as fleet,
        aiohttp.ClientSession(base_url=fleet.pods[0].url) as session,
    ):
        for path in ("/server_info", "/get_server_info"):
            async with session.get(path) as r:
                assert r.status == 200
                assert r.headers["x-sim-pod"] == "pod-a"
                info = await r.json()
            assert info["served_model_name"] == "m"
            assert (info["tp_size"], info["dp_size"]) == (1, 1)
            assert info["version"] == SIM_VERSION
            assert not _TOKENIZER_KEYS & info.keys()
        for path in ("/model_info", "/get_model_info"):
            async with session.get(path) as r:
                assert r.status == 200
                info = await r.json()
            assert info["is_generation"] is True
            assert not _TOKENIZER_KEYS & info.keys()
        async with session.get("/health_generate") as r:
            assert r.status == 200


@pytest.mark.asyncio
async def test_sim_pods_give_vllm_router_the_tokens_they_compute() -> None:
    # vllm-router's cache_aware keys its prefix tree on render's token_ids (or /tokenize's
    # tokens): they must count what the pod counts, and equal prefixes must give equal ids.
    system = {"role": "system", "content": "You are a shared system prompt. " * 8}
    chats = [[system, {"role": "user", "content": q}] for q in ("first?", "second question?")]
    async with (
        SimFleet([PodSpec(models=("m",))], FAST) as fleet,
        aiohttp.ClientSession(base_url=fleet.pods[0].url) as session,
    ):
        rendered: list[list[int]] = []
        for messages in chats:
            body = {"model": "m", "messages": messages, "max_tokens": 1}
            async with session.post("/v1/chat/completions/render", json=body) as r:
                assert r.status == 200
                ids = (await r.json())["token_ids"]
            async with session.post("/tokenize", json={"model": "m", "messages": messages}) as r:
                assert r.status == 200
                tokenized = await r.json()
            async with session.post("/v1/chat/completions", json=body) as r:
                assert r.status == 200
                usage = (await r.json())["usage"]
            assert all(isinstance(i, int) and 0 <= i < 2**32 for i in ids)
            assert tokenized["tokens"] == ids
            assert tokenized["count"] == len(ids) == usage["prompt_tokens"]
            rendered.append(ids)
    shared = len(system["content"].encode()) // 4
    assert rendered[0][:shared] == rendered[1][:shared]
    assert rendered[0] != rendered[1]


async def _custom_info(request: web.Request) -> web.StreamResponse:
    return web.json_response({"served_model_name": "custom"})


@pytest.mark.asyncio
async def test_routes_the_app_already_serves_are_left_alone() -> None:
    app = web.Application()
    app.router.add_get("/server_info", _custom_info)
    add_peer_routes(app, models=("m",), name="p")
    add_peer_routes(app, models=("m",), name="p")  # twice: still no clash
    async with TestClient(TestServer(app)) as client:
        async with client.get("/server_info") as r:
            assert (await r.json())["served_model_name"] == "custom"
        async with client.get("/get_server_info") as r:
            assert (await r.json())["served_model_name"] == "m"
        async with client.get("/model_info") as r:
            assert r.status == 200


def test_a_pod_without_models_is_refused() -> None:
    with pytest.raises(ValueError):
        add_peer_routes(web.Application(), models=(), name="p")
