from __future__ import annotations

import pytest

from epp.api.openai import parse_request_body, prompt_text
from epp.errors import BadRequest


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "<|user|>hi"),
        (
            {"messages": [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": [{"type": "text", "text": "a"},
                                                       {"type": "image_url", "image_url": {}},
                                                       {"type": "text", "text": "b"}]}]},
            "<|system|>be brief<|user|>ab",
        ),
        ({"prompt": "Once upon"}, "Once upon"),
        ({"prompt": ["one", "two"]}, "onetwo"),
        ({"prompt": [1, 2, 3]}, ""),
        ({"input": "embed me"}, "embed me"),
        ({"instructions": "sys", "input": [{"role": "user", "content": "q"}]}, "sys<|user|>q"),
        ({}, ""),
    ],
    ids=["chat", "chat-parts", "completion", "completion-list", "token-ids", "embeddings",
         "responses", "none"],
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
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"[]", "invalid_body"),
        (b'"model"', "invalid_body"),
        (b"{}", "missing_model"),
        (b'{"model": ""}', "missing_model"),
        (b'{"model": null}', "missing_model"),
        (b'{"model": ["a"]}', "invalid_model"),
    ],
    ids=["empty", "truncated", "array", "string", "no-model", "empty-model", "null-model",
         "list-model"],
)
def test_parse_rejects(body: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request_body(body)
    assert caught.value.code == code
    assert caught.value.status == 400
