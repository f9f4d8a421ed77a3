from __future__ import annotations

import orjson
import pytest

from epp.api.openai import parse_request_body, prompt_text
from epp.errors import BadRequest


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "<|user|>hi"),
        (
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "a"},
                            {"type": "image_url", "image_url": {}},
                            {"type": "text", "text": "b"},
                        ],
                    },
                ]
            },
            "<|system|>be brief<|user|>ab",
        ),
        ({"prompt": "Once upon"}, "Once upon"),
        ({"prompt": ["one", "two"]}, "onetwo"),
        ({"prompt": [1, 2, 3]}, ""),
        ({"input": "embed me"}, "embed me"),
        ({"instructions": "sys", "input": [{"role": "user", "content": "q"}]}, "sys<|user|>q"),
        ({}, ""),
    ],
    ids=[
        "chat",
        "chat-parts",
        "completion",
        "completion-list",
        "token-ids",
        "embeddings",
        "responses",
        "none",
    ],
)
def test_prompt_text(document: dict[str, object], expected: str) -> None:
    assert prompt_text(document) == expected


def test_parse_reads_model_prompt_and_stream() -> None:
    parsed = parse_request_body(b'{"model": "m", "prompt": "p", "stream": true}')
    assert (parsed.model, parsed.prompt, parsed.stream) == ("m", "p", True)
    assert parse_request_body(b'{"model": "m", "stream": "yes"}').stream is False


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "missing_body"),
        (b" \r\n\t", "missing_body"),
        (b"{", "invalid_json"),
        (b"[]", "invalid_body"),
        (b'"model"', "invalid_body"),
        (b"{}", "missing_model"),
        (b'{"model": ""}', "missing_model"),
        (b'{"model": null}', "missing_model"),
        (b'{"model": ["a"]}', "invalid_model"),
    ],
    ids=[
        "empty",
        "blank",
        "truncated",
        "array",
        "string",
        "no-model",
        "empty-model",
        "null-model",
        "list-model",
    ],
)
def test_parse_rejects(body: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request_body(body)
    assert caught.value.code == code
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "model",
    ["a\r\nx-evil: 1", "a\nb", "nul\u0000", "tab\tname", "del\u007f", "x" * 1025, "\u00e9" * 513],
    ids=["crlf", "lf", "nul", "tab", "del", "1025-bytes", "1026-utf8-bytes"],
)
def test_parse_rejects_model_names_that_cannot_be_a_header(model: str) -> None:
    body = orjson.dumps({"model": model, "prompt": "p"})
    with pytest.raises(BadRequest) as caught:
        parse_request_body(body)
    assert caught.value.code == "invalid_model"
    assert model not in caught.value.message  # the client's bytes are not echoed back


@pytest.mark.parametrize(
    "model",
    ["x" * 1024, "Qwen/Qwen2.5-7B-Instruct", "/models/llama 3", "\u6a21\u578b-7b"],
    ids=["1024-bytes", "hf-id", "path-with-space", "non-ascii"],
)
def test_parse_accepts_real_model_names(model: str) -> None:
    assert parse_request_body(orjson.dumps({"model": model})).model == model


@pytest.mark.parametrize(
    "document",
    [
        {
            "messages": [
                {"role": "system", "content": "s" * 10},
                {"role": "user", "content": [{"type": "text", "text": "u" * 50}]},
                {"role": "user", "content": "never read"},
            ]
        },
        {"instructions": "i" * 5, "input": [{"role": "user", "content": "c" * 40}]},
        {"prompt": ["a" * 30, "b" * 30, "c" * 30]},
        {"prompt": "p" * 100},
    ],
    ids=["chat", "responses", "prompt-list", "prompt"],
)
@pytest.mark.parametrize("limit", [0, 1, 12, 25, 40])
def test_prompt_text_cut_at_a_limit_is_the_start_of_the_whole(
    document: dict[str, object], limit: int
) -> None:
    whole = prompt_text(document)
    assert prompt_text(document, limit) == whole[:limit]
