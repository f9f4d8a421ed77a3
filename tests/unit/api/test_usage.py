"""Reading token usage from response bodies: JSON, SSE, the Responses API, any chunking."""

from __future__ import annotations

import orjson
import pytest

from epp.api.usage import Usage, UsageReader, find_usage, usage_from_object

CHAT_JSON = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": 'say "usage": {}'}}],
        "usage": {
            "prompt_tokens": 50,
            "total_tokens": 55,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 48},
        },
    }
)


def _event(document: object) -> bytes:
    return b"data: " + orjson.dumps(document) + b"\n\n"


CHAT_SSE = (
    b"".join(
        _event({"id": "c", "choices": [{"delta": {"content": f"tok{i}"}}], "usage": None})
        for i in range(5)
    )
    + _event(
        {
            "id": "c",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
        }
    )
    + b"data: [DONE]\n\n"
)
RESPONSES_SSE = (
    b'event: response.created\ndata: {"response":{"usage":null},"type":"response.created"}\n\n'
    b'event: response.output_text.delta\ndata: {"delta":"tok0","type":'
    b'"response.output_text.delta"}\n\n'
    b'event: response.completed\ndata: {"response":{"output":[],"tools":[{"parameters":'
    b'{"properties":{"usage":{"type":"string"}}}}],"usage":{"input_tokens":25,'
    b'"input_tokens_details":{"cached_tokens":16},"output_tokens":4,'
    b'"output_tokens_details":{"reasoning_tokens":0},"total_tokens":29},"user":null},'
    b'"type":"response.completed"}\n\n'
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (CHAT_JSON, Usage(50, 5, 48)),
        (CHAT_SSE, Usage(7, 5, None)),
        (RESPONSES_SSE, Usage(25, 4, 16)),
        (b'{"usage": {"prompt_tokens": 3, "completion_tokens": 1}}', Usage(3, 1)),
        (b'{"usage" :\n {"prompt_tokens":3,"completion_tokens":null}}', Usage(3, 0)),
        (
            b'{"data":[],"usage":{"prompt_tokens":9,"total_tokens":9,"completion_tokens":0,'
            b'"prompt_tokens_details":null}}',
            Usage(9, 0),
        ),
        (b'data: {"choices":[{"delta":{"content":"tok"}}]}\n\ndata: [DONE]\n\n', None),
        (b'{"usage": null}', None),
        (b'{"usage": {"prompt_tokens": -1, "completion_tokens": 1}}', None),
        (b'{"usage": {"prompt_tokens": 3, "completion_tokens": 1', None),  # cut short
        (b"", None),
    ],
    ids=[
        "chat-json",
        "chat-sse",
        "responses-sse",
        "spaced",
        "newline-null-completion",
        "embeddings",
        "no-usage",
        "null",
        "negative",
        "truncated",
        "empty",
    ],
)
def test_find_usage(data: bytes, expected: Usage | None) -> None:
    assert find_usage(data) == expected


def test_generated_text_cannot_fake_usage() -> None:
    text = 'x", "usage": {"prompt_tokens": 999, "completion_tokens": 999}, "y": "'
    body = orjson.dumps({"choices": [{"message": {"content": text}}]})
    assert find_usage(body) is None


def test_usage_from_object_prefers_chat_names_and_ignores_bools() -> None:
    assert usage_from_object(
        {"prompt_tokens": 1, "completion_tokens": 2, "input_tokens": 5}
    ) == Usage(1, 2)
    assert usage_from_object({"prompt_tokens": True, "completion_tokens": 2}) is None
    assert usage_from_object([1, 2]) is None


@pytest.mark.parametrize(
    ("data", "sse"),
    [(CHAT_JSON, False), (CHAT_SSE, True), (RESPONSES_SSE, True)],
    ids=["json", "chat-sse", "responses-sse"],
)
def test_reader_finds_usage_whatever_the_chunking(data: bytes, sse: bool) -> None:
    expected = find_usage(data)
    for size in (1, 2, 5, 17, 64, len(data)):
        reader = UsageReader(sse=sse)
        for start in range(0, len(data), size):
            reader.feed(data[start : start + size])
        assert reader.usage() == expected, size


def test_sse_reader_keeps_only_a_bounded_tail() -> None:
    reader = UsageReader(sse=True, sse_tail_bytes=1024)
    filler = _event({"choices": [{"delta": {"content": "x" * 100}}]})
    for _ in range(1000):
        reader.feed(filler)
        assert len(reader._buffer) <= 2 * 1024 + len(filler)
    reader.feed(CHAT_SSE[-300:])
    assert reader.usage() == Usage(7, 5, None)


def test_json_reader_gives_up_past_its_limit() -> None:
    reader = UsageReader(sse=False, max_json_bytes=len(CHAT_JSON) - 1)
    reader.feed(CHAT_JSON[:10])
    reader.feed(CHAT_JSON[10:])
    assert reader.usage() is None
    assert not reader._buffer  # nothing kept once over
