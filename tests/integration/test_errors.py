"""Requests epp refuses: answered by epp itself, with the status and an OpenAI error."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import Stack
from tests.integration.helpers import GHOST, QWEN, chat, dumps


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2, 3]", 400, "invalid_body"),
        (dumps({"messages": [{"role": "user", "content": "hi"}]}), 400, "missing_model"),
        (dumps({"model": 7, "prompt": "x"}), 400, "invalid_model"),
        (dumps(chat("no-such-model", "hi")), 404, "model_not_found"),
        (dumps(chat(GHOST, "hi")), 503, "no_ready_endpoint"),
    ],
    ids=[
        "invalid-json",
        "not-an-object",
        "missing-model",
        "model-not-a-string",
        "unknown-model",
        "no-ready-endpoint",
    ],
)
def test_error_answers(client: httpx.Client, body: bytes, status: int, code: str) -> None:
    response = client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert "x-sim-pod" not in response.headers  # no pod saw it
    error = response.json()["error"]
    assert error["code"] == code
    assert error["type"]
    assert error["message"]
    assert "param" in error and error["param"] is None  # OpenAI's shape, every key
    assert response.headers["x-request-id"]  # the id epp's log line for it carries
    # Only a request epp could not place says why it was dropped (the reference's header).
    dropped = response.headers.get("x-llm-d-request-dropped-reason")
    assert dropped == ("rejected-no-endpoints" if code == "no_ready_endpoint" else None)


def test_every_answer_names_its_request(stack: Stack, client: httpx.Client) -> None:
    mine = client.post(
        "/v1/chat/completions", json=chat(QWEN, "hi"), headers={"x-request-id": "req-42"}
    )
    assert mine.status_code == 200 and mine.headers["x-request-id"] == "req-42"
    generated = client.post("/v1/chat/completions", json=chat(QWEN, "hi"))
    assert len(generated.headers["x-request-id"]) >= 16  # Envoy made one up


def test_empty_post_is_a_bad_request(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_body"


def test_a_bad_stream_does_not_affect_others(stack: Stack, client: httpx.Client) -> None:
    for _ in range(3):
        assert client.post("/v1/chat/completions", content=b"{").status_code == 400
        good = client.post("/v1/chat/completions", json=chat(QWEN, "still fine"))
        assert good.status_code == 200
        assert good.headers["x-sim-pod"] in stack.fleet.qwen_pods
