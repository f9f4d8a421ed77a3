"""The body reaches the pod byte for byte."""

from __future__ import annotations

import hashlib
import json

import httpx

from tests.integration.conftest import Stack
from tests.integration.helpers import QWEN


def test_ten_megabyte_body_arrives_intact(stack: Stack, client: httpx.Client) -> None:
    filler = "".join(chr(0x41 + i % 26) + ("é" if i % 7 == 0 else "") for i in range(4_000_000))
    body = json.dumps(
        {
            "model": QWEN,
            "max_tokens": 1,
            "messages": [{"role": "user", "content": filler[: 10 * 1024 * 1024 - 200]}],
        },
        ensure_ascii=False,
    ).encode()
    assert len(body) > 4 * 1024 * 1024
    body = body + b" " * (10 * 1024 * 1024 - len(body))  # exactly 10 MiB, still valid JSON
    response = client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-sim-pod"] in stack.fleet.qwen_pods
    assert int(response.headers["x-sim-body-bytes"]) == len(body)
    assert response.headers["x-sim-body-sha256"] == hashlib.sha256(body).hexdigest()


def test_unicode_and_odd_json_arrive_unchanged(client: httpx.Client) -> None:
    body = (
        '{"model":"' + QWEN + '" , "messages":[{"role":"user","content":"h\\u00e9llo \U0001f600"}],'
        '"max_tokens":1,"extra":{"keep":[1,2.50,true,null]}}'
    ).encode()
    response = client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert response.headers["x-sim-body-sha256"] == hashlib.sha256(body).hexdigest()
