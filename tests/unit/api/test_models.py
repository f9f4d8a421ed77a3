"""The models API's paths and bodies: what a GET asks, and OpenAI's shapes back."""

from __future__ import annotations

import orjson
import pytest

from epp.api.models import ModelsQuery, model_body, models_list_body, models_query
from epp.api.openai import MAX_MODEL_NAME_BYTES
from epp.errors import BadRequest


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/models", ModelsQuery()),
        ("/v1/models/", ModelsQuery()),
        ("/v1/models?limit=5", ModelsQuery()),
        ("/v1/models/qwen2-1-5b", ModelsQuery("qwen2-1-5b")),
        ("/v1/models/meta-llama%2FLlama-3.1-8B", ModelsQuery("meta-llama/Llama-3.1-8B")),
        ("/v1/models/meta-llama/Llama-3.1-8B", ModelsQuery("meta-llama/Llama-3.1-8B")),
        ("/v1/models/a%20b?x=%2F", ModelsQuery("a b")),
        ("/v1/models/a+b", ModelsQuery("a+b")),  # a path, not a form: + is no blank
        ("/v1/models/caf%C3%A9", ModelsQuery("café")),
        ("/v1/models/%2541", ModelsQuery("%41")),  # decoded once
        ("/v1/modelsx", None),
        ("/v1/chat/completions", None),
        ("/v2/models", None),
        ("", None),
    ],
)
def test_models_query(path: str, expected: ModelsQuery | None) -> None:
    assert models_query(path) == expected


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/v1/models/%FF%FE", "not valid percent-encoded UTF-8"),
        ("/v1/models/a%0D%0Ab", "control character"),
        ("/v1/models/" + "x" * (MAX_MODEL_NAME_BYTES + 1), "longer than"),
        ("/v1/models/" + "%C3%A9" * (MAX_MODEL_NAME_BYTES // 2 + 1), "longer than"),
    ],
    ids=["not-utf8", "crlf", "too-long", "too-long-encoded"],
)
def test_an_id_no_request_could_name_is_a_bad_request(path: str, words: str) -> None:
    with pytest.raises(BadRequest, match=words) as caught:
        models_query(path)
    assert caught.value.code == "invalid_model"


def test_bodies_have_openais_shape() -> None:
    assert orjson.loads(models_list_body(["a", "b/c"], created=1700000000)) == {
        "object": "list",
        "data": [
            {"id": "a", "object": "model", "created": 1700000000, "owned_by": "epp"},
            {"id": "b/c", "object": "model", "created": 1700000000, "owned_by": "epp"},
        ],
    }
    assert orjson.loads(models_list_body([], created=1)) == {"object": "list", "data": []}
    assert orjson.loads(model_body("a", created=2)) == {
        "id": "a",
        "object": "model",
        "created": 2,
        "owned_by": "epp",
    }
