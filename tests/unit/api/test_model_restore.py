"""Restoring the client's model name in responses, however the chunks split it."""

from __future__ import annotations

import orjson
import pytest

from epp.api.model_restore import ModelNameRestorer

SSE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"llama-v2",'
    b'"choices":[{"delta":{"content":"Hi"}}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"llama-v2",'
    b'"choices":[{"delta":{"content":" there"}}]}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 64, len(SSE)])
def test_every_split_gives_the_same_stream(size: int) -> None:
    restorer = ModelNameRestorer("llama-v2", "llama")
    pieces = [SSE[i : i + size] for i in range(0, len(SSE), size)]
    out = b"".join(
        restorer.feed(piece, end_of_stream=i == len(pieces) - 1) for i, piece in enumerate(pieces)
    )
    assert out == SSE.replace(b'"model":"llama-v2"', b'"model":"llama"')


def test_a_whole_event_is_never_held_back() -> None:
    restorer = ModelNameRestorer("llama-v2", "llama")
    first_event = SSE[: SSE.index(b"\n\n") + 2]
    assert restorer.feed(first_event, end_of_stream=False) == first_event.replace(
        b"llama-v2", b"llama"
    )


def test_spaced_json_and_names_that_need_escaping() -> None:
    served, client = 'org/m "v2"', "org/m"
    body = orjson.dumps({"model": served}).replace(b":", b": ")
    restorer = ModelNameRestorer(served, client)
    assert orjson.loads(restorer.feed(body, end_of_stream=True)) == {"model": client}


def test_other_fields_with_the_same_text_are_left_alone() -> None:
    body = b'{"model":"v2","choices":[{"text":"model v2 says \\"v2\\""}]}'
    restored = ModelNameRestorer("v2", "v1").feed(body, end_of_stream=True)
    assert restored == body.replace(b'"model":"v2"', b'"model":"v1"')
