from __future__ import annotations

import asyncio
import hashlib
import io
import json

import pytest

from vllm_sim import SimConfig
from vllm_sim.engine import SimEngine
from vllm_sim.server import ENGINE_KEY, REQUEST_LOG_SIZE, create_app
from vllm_sim.tokens import count_tokens

from .helpers import FAST, Gate, chat_body, metric_value, serve, sse_events, until


@pytest.mark.asyncio
async def test_chat_completion_plain() -> None:
    async with serve() as (pod, session):
        async with session.post("/v1/chat/completions", json=chat_body("hi", max_tokens=3)) as r:
            assert r.status == 200
            assert r.headers["x-sim-pod"] == pod.address
            body = await r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "m"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "tok0 tok1 tok2", "tool_calls": []}
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (1, 3, 4)


@pytest.mark.asyncio
async def test_plain_responses_report_simulated_latencies() -> None:
    config = SimConfig(time_scale=0, base_latency_s=0.002, decode_s_per_token=0.01,
                       kv_read_s_per_token=0.0)  # fmt: skip
    async with serve(config) as (pod, session):
        async with session.post("/v1/chat/completions", json=chat_body("hi", max_tokens=3)) as r:
            ttft, e2e = float(r.headers["x-sim-ttft-s"]), float(r.headers["x-sim-e2e-s"])
    assert ttft == pytest.approx(0.012)  # base latency + one step
    assert e2e == pytest.approx(0.032)
    assert pod.engine.histograms.ttft_s.sum == pytest.approx(ttft, abs=1e-6)


@pytest.mark.asyncio
async def test_chat_content_parts_and_max_completion_tokens() -> None:
    messages = [
        {"role": "system", "content": "abcd"},
        {"role": "user", "content": [{"type": "text", "text": "efgh"}, {"type": "image_url"}]},
    ]
    payload = {"model": "m", "messages": messages, "max_completion_tokens": 2, "max_tokens": 9}
    async with serve() as (_, session):
        async with session.post("/v1/chat/completions", json=payload) as r:
            body = await r.json()
    assert body["usage"]["prompt_tokens"] == 2
    assert body["usage"]["completion_tokens"] == 2


@pytest.mark.asyncio
async def test_default_max_tokens_and_default_model() -> None:
    payload = {"messages": [{"role": "user", "content": "x"}]}
    async with serve(SimConfig(time_scale=0, default_max_tokens=5), models=("a", "b")) as (_, s):
        async with s.post("/v1/chat/completions", json=payload) as r:
            body = await r.json()
    assert body["model"] == "a"
    assert body["usage"]["completion_tokens"] == 5


@pytest.mark.asyncio
async def test_chat_streaming_one_event_per_token_then_done() -> None:
    async with serve() as (_, session):
        payload = chat_body("hi", max_tokens=4, stream=True)
        async with session.post("/v1/chat/completions", json=payload) as r:
            assert r.status == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(await r.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:]]
    assert contents == ["tok0", " tok1", " tok2", " tok3"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[1:]] == [None, None, None, "length"]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)


@pytest.mark.asyncio
async def test_chat_streaming_usage_chunk_when_asked() -> None:
    payload = chat_body("hi", max_tokens=2, stream=True, stream_options={"include_usage": True})
    async with serve() as (_, session):
        async with session.post("/v1/chat/completions", json=payload) as r:
            events = sse_events(await r.text())
    assert events[-1] == "[DONE]"
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 2
    assert usage_chunk["usage"]["total_tokens"] == 3


@pytest.mark.asyncio
async def test_completions_plain_and_streaming() -> None:
    async with serve() as (_, session):
        payload = {"model": "m", "prompt": "abcdefgh", "max_tokens": 2}
        async with session.post("/v1/completions", json=payload) as r:
            body = await r.json()
        stream = {**payload, "stream": True, "stream_options": {"include_usage": True}}
        async with session.post("/v1/completions", json=stream) as r:
            events = sse_events(await r.text())
        async with session.post("/v1/completions", json={"prompt": [1, 2, 3]}) as r:
            ids = await r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "tok0 tok1"
    assert body["usage"]["prompt_tokens"] == 2
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:2]]
    assert texts == ["tok0", " tok1"]
    assert json.loads(events[2])["usage"]["prompt_tokens"] == 2
    assert events[3] == "[DONE]"
    assert ids["usage"]["prompt_tokens"] == 3


@pytest.mark.asyncio
async def test_embeddings_are_small_deterministic_unit_vectors() -> None:
    async with serve() as (_, session):
        payload = {"model": "m", "input": ["a", "b", "a"]}
        async with session.post("/v1/embeddings", json=payload) as r:
            body = await r.json()
    vectors = [d["embedding"] for d in body["data"]]
    assert len(vectors) == 3
    assert vectors[0] == vectors[2] != vectors[1]
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-9
    assert body["usage"]["prompt_tokens"] == 1


@pytest.mark.asyncio
async def test_models_and_health() -> None:
    async with serve(models=("base", "lora")) as (pod, session):
        async with session.get("/v1/models") as r:
            models = await r.json()
        async with session.get("/health") as r:
            assert r.status == 200
            assert await r.read() == b""
            assert r.headers["x-sim-pod"] == pod.address
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["base", "lora"]
    assert [m["parent"] for m in models["data"]] == [None, "base"]


@pytest.mark.parametrize(
    ("path", "payload", "status", "param"),
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", b"[1, 2]", 400, None),
        ("/v1/chat/completions", b'{"model": "m"}', 400, "messages"),
        ("/v1/chat/completions", b'{"model": "m", "messages": []}', 400, "messages"),
        ("/v1/chat/completions", b'{"messages": [{"content": 1}]}', 400, "messages"),
        ("/v1/chat/completions", b'{"messages": [{"content": "x"}], "max_tokens": 0}', 400,
         "max_tokens"),
        ("/v1/completions", b'{"model": "m"}', 400, "prompt"),
        ("/v1/completions", b'{"prompt": ["a", "b"]}', 400, "prompt"),
        ("/v1/embeddings", b'{"input": 3}', 400, "input"),
        ("/v1/chat/completions", b'{"model": "nope", "messages": [{"content": "x"}]}', 404,
         "model"),
        ("/v1/completions", b'{"model": "nope", "prompt": "x"}', 404, "model"),
    ],
    ids=["bad-json", "not-object", "no-messages", "empty-messages", "bad-content",
         "zero-max-tokens", "no-prompt", "batch-prompt", "bad-input", "chat-unknown-model",
         "completion-unknown-model"],
)  # fmt: skip
@pytest.mark.asyncio
async def test_errors_have_vllm_shape(
    path: str, payload: bytes, status: int, param: str | None
) -> None:
    async with serve() as (pod, session):
        async with session.post(path, data=payload) as r:
            assert r.status == status
            assert r.headers["x-sim-pod"] == pod.address
            body = await r.json()
    assert body["error"]["code"] == status
    assert body["error"]["param"] == param
    assert body["error"]["type"] == ("NotFoundError" if status == 404 else "BadRequestError")
    if status == 404:
        assert body["error"]["message"] == "The model `nope` does not exist."


@pytest.mark.asyncio
async def test_unknown_route_is_a_json_404_with_pod_header() -> None:
    async with serve(name="pod-a") as (_, session):
        async with session.get("/v2/nothing") as r:
            assert r.status == 404
            assert r.headers["x-sim-pod"] == "pod-a"
            assert (await r.json())["error"]["code"] == 404


@pytest.mark.asyncio
async def test_body_digest_and_model_headers() -> None:
    raw = json.dumps(chat_body("héllo", max_tokens=1)).encode()
    async with serve() as (_, session):
        headers = {"content-type": "application/json", "x-gateway-model-name": "m"}
        async with session.post("/v1/chat/completions", data=raw, headers=headers) as r:
            assert r.headers["x-sim-body-sha256"] == hashlib.sha256(raw).hexdigest()
            assert r.headers["x-sim-body-bytes"] == str(len(raw))
            assert r.headers["x-sim-model-header"] == "m"
        stream = json.dumps(chat_body("x", max_tokens=1, stream=True)).encode()
        async with session.post("/v1/chat/completions", data=stream) as r:
            assert r.headers["x-sim-body-sha256"] == hashlib.sha256(stream).hexdigest()
            assert r.headers["x-sim-model-header"] == ""
            await r.read()
        async with session.get("/v1/models") as r:
            assert r.headers["x-sim-body-bytes"] == "0"


@pytest.mark.asyncio
async def test_ten_megabyte_body_is_accepted_and_hashed() -> None:
    raw = json.dumps(chat_body("x" * (10 * 1024 * 1024), max_tokens=1)).encode()
    async with serve() as (_, session):
        headers = {"content-type": "application/json"}
        # A file-like body: aiohttp warns about large raw bytes blocking the loop.
        data = io.BytesIO(raw)
        async with session.post("/v1/chat/completions", data=data, headers=headers) as r:
            assert r.status == 200
            assert r.headers["x-sim-body-sha256"] == hashlib.sha256(raw).hexdigest()
            assert r.headers["x-sim-body-bytes"] == str(len(raw))
            body = await r.json()
    assert body["usage"]["prompt_tokens"] == 10 * 1024 * 1024 // 4


@pytest.mark.asyncio
async def test_request_log_is_bounded_and_skips_scrapes() -> None:
    raw = json.dumps(chat_body("x", max_tokens=1)).encode()
    async with serve() as (_, session):
        post_headers = {"x-gateway-model-name": "m"}
        async with session.post("/v1/chat/completions", data=raw, headers=post_headers) as r:
            await r.read()
        async with session.get("/metrics") as r:
            await r.read()
        async with session.get("/sim/requests") as r:
            log = await r.json()
        assert len(log) == 1
        entry = log[0]
        assert (entry["method"], entry["path"]) == ("POST", "/v1/chat/completions")
        assert entry["body_sha256"] == hashlib.sha256(raw).hexdigest()
        assert entry["body_bytes"] == len(raw)
        assert entry["headers"]["x-gateway-model-name"] == "m"
        for _ in range(REQUEST_LOG_SIZE + 4):
            async with session.get("/v1/models") as r:
                await r.read()
        async with session.get("/sim/requests") as r:
            log = await r.json()
        assert len(log) == REQUEST_LOG_SIZE
        assert all(e["path"] == "/v1/models" for e in log)
        async with session.delete("/sim/requests") as r:
            await r.read()
        async with session.get("/sim/requests") as r:
            assert await r.json() == []


@pytest.mark.asyncio
async def test_metrics_show_waiting_when_over_max_num_seqs() -> None:
    gate = Gate()
    config = SimConfig(max_num_seqs=2, base_latency_s=0.0)
    async with serve(config, gate=gate) as (pod, session):

        async def one(i: int) -> int:
            payload = chat_body(f"prompt {i}" * 10, max_tokens=2)
            async with session.post("/v1/chat/completions", json=payload) as r:
                await r.read()
                return r.status

        tasks = [asyncio.create_task(one(i)) for i in range(5)]
        await until(lambda: pod.engine.waiting == 3, "three waiting")
        async with session.get("/metrics") as r:
            assert r.headers["content-type"].startswith("text/plain")
            text = await r.text()
        assert metric_value(text, "vllm:num_requests_running") == 2
        assert metric_value(text, "vllm:num_requests_waiting") == 3
        assert 0 < metric_value(text, "vllm:kv_cache_usage_perc") <= 1
        gate.open()
        assert await asyncio.gather(*tasks) == [200] * 5
        async with session.get("/sim/state") as r:
            state = await r.json()
        assert (state["running"], state["waiting"], state["request_success"]) == (0, 0, 5)


@pytest.mark.asyncio
async def test_client_disconnect_aborts_the_request() -> None:
    gate = Gate()
    async with serve(SimConfig(base_latency_s=0.0), gate=gate) as (pod, session):
        payload = chat_body("x", max_tokens=3, stream=True)
        r = await session.post("/v1/chat/completions", json=payload)
        await until(lambda: pod.engine.running == 1, "request running")
        r.close()
        await until(lambda: pod.engine.running == 0, "request aborted")
        assert pod.engine.stats().request_success == 0


@pytest.mark.asyncio
async def test_repeated_prompt_reports_cached_tokens() -> None:
    payload = chat_body("p" * 400, max_tokens=1)
    async with serve() as (_, session):
        cached = []
        for _ in range(2):
            async with session.post("/v1/chat/completions", json=payload) as r:
                cached.append((await r.json())["usage"]["prompt_tokens_details"]["cached_tokens"])
        async with session.get("/metrics") as r:
            text = await r.text()
    assert cached == [0, 96]
    assert metric_value(text, "vllm:prefix_cache_queries_total") == 200
    assert metric_value(text, "vllm:prefix_cache_hits_total") == 96


@pytest.mark.asyncio
async def test_small_cache_evicts_least_recently_used_prompt() -> None:
    config = SimConfig(time_scale=0, kv_num_blocks=8, kv_block_size=4)
    prompts = ["a" * 64, "b" * 64, "c" * 64, "b" * 64, "a" * 64]  # 4 blocks each
    async with serve(config) as (pod, session):
        cached = []
        for p in prompts:
            async with session.post("/v1/chat/completions", json=chat_body(p, max_tokens=1)) as r:
                cached.append((await r.json())["usage"]["prompt_tokens_details"]["cached_tokens"])
    # c evicts a (least recent); b survives and hits; a must be recomputed.
    assert cached == [0, 0, 0, 12, 0]
    assert pod.engine.kv.evicted_blocks >= 4


@pytest.mark.asyncio
async def test_tokenize_has_vllm_shape_and_the_pods_token_rule() -> None:
    prompt = "The quick brown fox jumps"  # 25 bytes: 7 tokens
    async with serve() as (pod, session):
        async with session.post("/tokenize", json={"model": "m", "prompt": prompt}) as r:
            assert r.status == 200
            body = await r.json()
        chat = {"model": "m", "messages": [{"role": "user", "content": prompt}],
                "return_token_strs": True}  # fmt: skip
        async with session.post("/tokenize", json=chat) as r:
            from_chat = await r.json()
        async with session.post("/tokenize", json={"model": "nope", "prompt": "x"}) as r:
            assert r.status == 404
        async with session.post("/tokenize", json={"model": "m"}) as r:
            assert r.status == 400
        # The ids, sent back as a prompt, count and hash like the text.
        payload = {"model": "m", "prompt": body["tokens"], "max_tokens": 1}
        async with session.post("/v1/completions", json=payload) as r:
            assert (await r.json())["usage"]["prompt_tokens"] == 7
    assert set(body) == {"count", "max_model_len", "tokens", "token_strs"}
    assert body["count"] == len(body["tokens"]) == count_tokens(prompt) == 7
    assert body["max_model_len"] == pod.engine.config.max_model_len
    assert body["token_strs"] is None
    assert all(isinstance(t, int) for t in body["tokens"])
    assert from_chat["tokens"] == body["tokens"]
    assert "".join(from_chat["token_strs"]) == prompt


@pytest.mark.asyncio
async def test_render_endpoints_return_vllm_generate_requests() -> None:
    messages = [{"role": "system", "content": "Be brief. "},
                {"role": "user", "content": "What is a KV cache?"}]  # fmt: skip
    async with serve() as (pod, session):
        payload = {"model": "m", "messages": messages, "max_tokens": 5, "stream": True}
        async with session.post("/v1/chat/completions/render", json=payload) as r:
            assert r.status == 200
            chat = await r.json()
        async with session.post("/tokenize", json={"model": "m", "messages": messages}) as r:
            tokens = (await r.json())["tokens"]
        completion = {"model": "m", "prompt": "Once upon a time"}
        async with session.post("/v1/completions/render", json=completion) as r:
            rendered = await r.json()
        async with session.post("/v1/chat/completions/render", json={"model": "m"}) as r:
            assert r.status == 400
        async with session.get("/v1/models") as r:
            models = await r.json()
        assert pod.engine.stats().request_success == 0  # rendering runs no engine step
    vllm_fields = {"request_id", "token_ids", "features", "sampling_params", "model", "stream",
                   "stream_options", "cache_salt", "priority", "kv_transfer_params"}  # fmt: skip
    assert vllm_fields <= set(chat)
    assert chat["request_id"].startswith("chatcmpl-")
    assert chat["token_ids"] == tokens
    assert chat["prompt"] == "Be brief. What is a KV cache?"
    assert chat["sampling_params"]["max_tokens"] == 5
    assert chat["stream"] is True and chat["model"] == "m"
    assert isinstance(rendered, list) and len(rendered) == 1
    assert rendered[0]["request_id"].startswith("cmpl-")
    assert len(rendered[0]["token_ids"]) == count_tokens("Once upon a time")
    assert rendered[0]["sampling_params"]["max_tokens"] == pod.engine.config.default_max_tokens
    assert models["data"][0]["max_model_len"] == pod.engine.config.max_model_len


def test_app_exposes_its_engine_to_added_routes() -> None:
    engine = SimEngine(FAST)
    assert create_app(engine, models=("m",), name="p")[ENGINE_KEY] is engine
