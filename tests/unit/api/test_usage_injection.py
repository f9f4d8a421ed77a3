"""Asking streams for usage, and taking the usage event back out, however chunks split."""

from __future__ import annotations

import random

import orjson
import pytest

from epp.api.usage_injection import (
    MAX_HELD_BYTES,
    UsageEventStripper,
    rewrite_request_body,
    wants_usage_option,
)


def _event(document: object) -> bytes:
    return b"data: " + orjson.dumps(document) + b"\n\n"


TOKENS = [
    _event({"id": "c", "choices": [{"index": 0, "delta": {"content": f" tok{i}"}}]})
    for i in range(6)
]
USAGE = _event({"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 6}})
DONE = b"data: [DONE]\n\n"
STREAM = b"".join(TOKENS) + USAGE + DONE
EXPECTED = b"".join(TOKENS) + DONE


def _strip(pieces: list[bytes]) -> list[bytes]:
    stripper = UsageEventStripper()
    return [
        stripper.feed(piece, end_of_stream=i == len(pieces) - 1) for i, piece in enumerate(pieces)
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50, 111, len(STREAM)])
def test_every_fixed_split_gives_the_stream_without_the_usage_event(size: int) -> None:
    pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert b"".join(_strip(pieces)) == EXPECTED


def test_random_splits() -> None:
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 12)))
        pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        assert b"".join(_strip(pieces)) == EXPECTED


def test_complete_events_are_released_at_once() -> None:
    stripper = UsageEventStripper()
    for event in TOKENS:
        assert stripper.feed(event, end_of_stream=False) == event
    half = len(TOKENS[0]) // 2
    assert stripper.feed(TOKENS[0][:half], end_of_stream=False) == b""  # held: incomplete
    assert stripper.feed(TOKENS[0][half:] + USAGE, end_of_stream=False) == TOKENS[0]
    assert stripper.feed(DONE, end_of_stream=True) == DONE
    # Once the usage event is gone, chunks pass straight through.
    assert stripper.feed(b"data: late", end_of_stream=False) == b"data: late"


def test_crlf_events_and_spaced_json() -> None:
    spaced = b'data: {"id": "c", "choices": [], "usage": {"prompt_tokens": 1}}\r\n\r\n'
    token = b'data: {"choices": [{"delta": {"content": "a"}}]}\r\n\r\n'
    stream = token + spaced + b"data: [DONE]\r\n\r\n"
    pieces = [stream[i : i + 10] for i in range(0, len(stream), 10)]
    assert b"".join(_strip(pieces)) == token + b"data: [DONE]\r\n\r\n"


def test_other_empty_choice_events_are_kept() -> None:
    no_usage = _event({"id": "c", "choices": []})
    assert b"".join(_strip([no_usage, DONE])) == no_usage + DONE


def test_an_event_that_never_ends_is_not_held_without_bound() -> None:
    stripper = UsageEventStripper()
    assert stripper.feed(b"data: " + b"x" * 100, end_of_stream=False) == b""
    big = b"y" * MAX_HELD_BYTES
    assert stripper.feed(big, end_of_stream=False) == b"data: " + b"x" * 100 + big


@pytest.mark.parametrize(
    ("body", "expected", "injected"),
    [
        (
            {"model": "m", "stream": True},
            {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
            True,
        ),
        (
            {"stream": True, "stream_options": {"continuous_usage_stats": True}},
            {
                "stream": True,
                "stream_options": {"continuous_usage_stats": True, "include_usage": True},
            },
            True,
        ),
        (
            {"stream": True, "stream_options": {"include_usage": False}},
            {"stream": True, "stream_options": {"include_usage": True}},
            True,
        ),
        ({"stream": True, "stream_options": {"include_usage": True}}, None, False),
        ({"stream": True, "stream_options": "odd"}, None, False),
    ],
    ids=["absent", "other-options", "false", "already-on", "not-an-object"],
)
def test_include_usage_is_added_when_missing(
    body: dict[str, object], expected: dict[str, object] | None, injected: bool
) -> None:
    raw = orjson.dumps(body)
    out, added = rewrite_request_body(raw, include_usage=True)
    assert added is injected
    if expected is None:
        assert out is raw  # untouched, byte for byte
    else:
        assert orjson.loads(out) == expected
        assert list(orjson.loads(out)) == list(expected)  # key order kept


def test_model_rewrite_and_injection_in_one_pass() -> None:
    out, added = rewrite_request_body(
        b'{"model":"a","stream":true,"messages":[]}', model="b", include_usage=True
    )
    assert added
    assert orjson.loads(out) == {
        "model": "b",
        "stream": True,
        "messages": [],
        "stream_options": {"include_usage": True},
    }
    out, added = rewrite_request_body(b'{"model":"a"}', model="b")
    assert (orjson.loads(out), added) == ({"model": "b"}, False)


@pytest.mark.parametrize(
    ("path", "wanted"),
    [
        ("/v1/chat/completions", True),
        ("/v1/completions?x=1", True),
        ("/v1/chat/completions/", True),
        ("/v1/responses", False),
        ("/v1/embeddings", False),
    ],
)
def test_wants_usage_option(path: str, wanted: bool) -> None:
    assert wants_usage_option(path) is wanted
