"""Bodies a client controls must never make a simulated pod answer 500.

A 500 is what a broken model server sends, so epp's passive health counts it against the
pod; a malformed request must get vLLM's 400 error body instead. Every case goes through
the pod's real HTTP server.
"""

from __future__ import annotations

import aiohttp
import pytest

from .helpers import chat_body, serve

# Every route that parses a JSON body.
JSON_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/tokenize",
    "/v1/chat/completions/render",
    "/v1/completions/render",
)

TIMEOUT = aiohttp.ClientTimeout(total=20)
JSON = {"content-type": "application/json"}


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


BAD_BODIES: list[tuple[str, bytes, str | None]] = [
    # Python's json recurses once per level and raises RecursionError near 1,000.
    ("/v1/chat/completions", nested(1000), None),
    ("/v1/chat/completions", b'{"messages": ' + nested(5000) + b"}", None),
    ("/v1/chat/completions", b"[" * 100_000, None),
    ("/v1/chat/completions", b'{"model": "m", "stream": true, "x": ' + nested(3000) + b"}", None),
    # A lone UTF-16 surrogate is valid JSON text but no UTF-8 can carry it.
    ("/v1/chat/completions", b'{"messages": [{"content": "a\\ud800b"}], "max_tokens": 1}', None),
    (
        "/v1/chat/completions",
        b'{"messages": [{"content": "\\udfff"}], "max_tokens": 1, "stream": true}',
        None,
    ),
    ("/v1/completions", b'{"prompt": "\\uDC00", "max_tokens": 1}', None),
    ("/v1/embeddings", b'{"input": ["ok", "\\ud83d"]}', None),
    ("/v1/responses", b'{"input": "\\ud800", "max_output_tokens": 1}', None),
    ("/tokenize", b'{"prompt": "\\ud800", "return_token_strs": true}', None),
    ("/v1/chat/completions/render", b'{"messages": [{"content": "\\ud800"}]}', None),
    ("/v1/chat/completions", b'{"messages": [{"content": "x"}], "\\ud800": 1}', None),
    # A surrogate encoded as UTF-8 bytes (CESU-style) is not UTF-8 either.
    ("/v1/chat/completions", b'{"messages": [{"content": "\xed\xa0\x80"}]}', None),
    ("/v1/chat/completions", b'{"messages": [{"content": "\xff\xfe"}]}', None),
    # Token budgets beyond the context length would run forever, not fail.
    (
        "/v1/chat/completions",
        b'{"messages": [{"content": "x"}], "max_tokens": 1000000000000}',
        "max_tokens",
    ),
    (
        "/v1/completions",
        b'{"prompt": "x", "max_completion_tokens": 131073}',
        "max_completion_tokens",
    ),
    (
        "/v1/responses",
        b'{"input": "x", "max_output_tokens": 99999999999999999999}',
        "max_output_tokens",
    ),
    # Fields the render endpoints echo back must have vLLM's types.
    (
        "/v1/chat/completions/render",
        b'{"messages": [{"content": "x"}], "priority": "high"}',
        "priority",
    ),
    ("/v1/completions/render", b'{"prompt": "x", "priority": ' + nested(900) + b"}", "priority"),
    (
        "/v1/chat/completions/render",
        b'{"messages": [{"content": "x"}], "temperature": "hot"}',
        "temperature",
    ),
    ("/v1/chat/completions/render", b'{"messages": [{"content": "x"}], "top_p": NaN}', "top_p"),
    ("/v1/chat/completions/render", b'{"messages": [{"content": "x"}], "seed": 1.5}', "seed"),
    (
        "/v1/completions/render",
        b'{"prompt": "x", "cache_salt": ' + nested(900) + b"}",
        "cache_salt",
    ),
    (
        "/v1/chat/completions/render",
        b'{"messages": [{"content": "x"}], "stream": true, "stream_options": [1]}',
        "stream_options",
    ),
    (
        "/v1/chat/completions/render",
        b'{"messages": [{"content": "x"}], "stream": true, "stream_options": {"include_usage": '
        + nested(900)
        + b"}}",
        "stream_options",
    ),
]
BAD_IDS = [
    "deep-1000", "deep-in-messages", "unclosed-100k", "deep-stream", "surrogate-chat",
    "surrogate-chat-stream", "surrogate-completion", "surrogate-embedding",
    "surrogate-responses", "surrogate-tokenize", "surrogate-render", "surrogate-key",
    "encoded-surrogate", "not-utf8", "huge-max-tokens", "max-completion-over-context",
    "huge-max-output-tokens", "render-priority-str", "render-priority-deep",
    "render-temperature-str", "render-top-p-nan", "render-seed-float",
    "render-cache-salt-deep", "render-stream-options-list", "render-stream-options-deep",
]  # fmt: skip


@pytest.mark.parametrize(("path", "payload", "param"), BAD_BODIES, ids=BAD_IDS)
@pytest.mark.asyncio
async def test_malformed_body_is_a_json_400_and_the_pod_keeps_serving(
    path: str, payload: bytes, param: str | None
) -> None:
    async with serve(name="pod-a") as (_, session):
        async with session.post(path, data=payload, headers=JSON, timeout=TIMEOUT) as r:
            assert r.status == 400, await r.text()
            assert r.headers["content-type"].startswith("application/json")
            assert r.headers["x-sim-pod"] == "pod-a"
            error = (await r.json())["error"]
        async with session.post(
            "/v1/chat/completions", json=chat_body("x", max_tokens=1), timeout=TIMEOUT
        ) as r:
            assert r.status == 200
    assert error["code"] == 400
    assert error["type"] == "BadRequestError"
    assert error["param"] == param


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.asyncio
async def test_deep_nesting_is_a_400_on_every_json_route(path: str) -> None:
    async with serve() as (_, session):
        async with session.post(path, data=nested(2000), headers=JSON, timeout=TIMEOUT) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == 400


@pytest.mark.parametrize(
    ("payload", "content"),
    [
        # A valid surrogate pair is one character; an escaped backslash is no escape.
        (b'{"messages": [{"content": "\\ud83d\\ude00"}], "max_tokens": 1}', "\U0001f600"),
        (b'{"messages": [{"content": "\\\\ud800"}], "max_tokens": 1}', "\\ud800"),
        (b'{"messages": [{"content": "x"}], "max_tokens": 1, "extra": ' + nested(64) + b"}", "x"),
        (b'\xef\xbb\xbf{"messages": [{"content": "bom"}], "max_tokens": 1}', "bom"),
    ],
    ids=["surrogate-pair", "escaped-backslash", "nested-extra-field", "utf8-bom"],
)
@pytest.mark.asyncio
async def test_well_formed_bodies_near_the_edges_are_served(payload: bytes, content: str) -> None:
    async with serve() as (_, session):
        async with session.post(
            "/tokenize",
            data=payload.replace(b'"max_tokens": 1', b'"m": 1'),
            headers=JSON,
            timeout=TIMEOUT,
        ) as r:
            assert r.status == 200
            strs = await r.json()
        async with session.post(
            "/v1/chat/completions", data=payload, headers=JSON, timeout=TIMEOUT
        ) as r:
            assert r.status == 200
            body = await r.json()
    assert body["usage"]["prompt_tokens"] == strs["count"]
    assert strs["count"] == -(-len(content.encode()) // 4)


@pytest.mark.asyncio
async def test_render_echoes_well_typed_sampling_fields() -> None:
    payload = {"model": "m", "messages": [{"content": "x"}], "stream": True,
               "stream_options": {"include_usage": True}, "priority": -3, "temperature": 0.5,
               "top_p": 1, "seed": 7, "cache_salt": "salt"}  # fmt: skip
    async with serve() as (_, session):
        async with session.post("/v1/chat/completions/render", json=payload, timeout=TIMEOUT) as r:
            assert r.status == 200
            rendered = await r.json()
    assert rendered["priority"] == -3
    assert rendered["cache_salt"] == "salt"
    assert rendered["stream_options"] == {"include_usage": True}
    params = rendered["sampling_params"]
    assert (params["temperature"], params["top_p"], params["seed"]) == (0.5, 1, 7)
