"""OpenAI's models API, as far as epp answers it: ``GET /v1/models`` and ``/v1/models/{id}``.

A pool's pods each list only their own models, so epp answers for the pool. The path
is client text: the id is percent-decoded once (``meta-llama%2FLlama-3.1-8B`` is the
model ``meta-llama/Llama-3.1-8B``, and so is the same id left unencoded, as older
OpenAI clients send it) and must pass :func:`~epp.api.openai.model_name_problem`, as a
model named in a body must.

Example::

    query = models_query("/v1/models/meta-llama%2FLlama-3.1-8B?x=1")
    assert query == ModelsQuery("meta-llama/Llama-3.1-8B")
    models_list_body(["a", "b"], created=1700000000)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

import orjson

from epp.api.openai import model_name_problem
from epp.errors import BadRequest

__all__ = [
    "MODELS_PATH",
    "OWNED_BY",
    "ModelsQuery",
    "model_body",
    "models_list_body",
    "models_query",
]

MODELS_PATH = "/v1/models"
_ONE_MODEL_PREFIX = MODELS_PATH + "/"
# OpenAI's owned_by names an organisation; the pods' own answers say "vllm" or "sglang",
# but epp answers for a pool whose engines it need not know.
OWNED_BY = "epp"


@dataclass(frozen=True, slots=True)
class ModelsQuery:
    """A GET of the models API: the list (``model`` None) or one model by id."""

    model: str | None = None


def models_query(path: str) -> ModelsQuery | None:
    """What ``path`` (the ``:path`` header, query string included) asks of the models
    API; ``None`` for any other path.

    Raises :class:`BadRequest` for an id that is not valid percent-encoded UTF-8 or that
    no request could name as its model (too long, control characters).
    """
    path = path.partition("?")[0].partition("#")[0]
    if path == MODELS_PATH or path == _ONE_MODEL_PREFIX:
        return ModelsQuery()
    if not path.startswith(_ONE_MODEL_PREFIX):
        return None
    try:
        model = unquote(path[len(_ONE_MODEL_PREFIX) :], errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(
            "the model id in the path is not valid percent-encoded UTF-8", code="invalid_model"
        ) from None
    problem = model_name_problem(model)
    if problem is not None:
        raise BadRequest(f"the model id in the path {problem}", code="invalid_model")
    return ModelsQuery(model)


def models_list_body(models: Iterable[str], *, created: int) -> bytes:
    """OpenAI's list of models: ``{"object": "list", "data": [model, ...]}``."""
    return orjson.dumps({"object": "list", "data": [_model(m, created) for m in models]})


def model_body(model: str, *, created: int) -> bytes:
    """OpenAI's model object: ``{"id", "object": "model", "created", "owned_by"}``."""
    return orjson.dumps(_model(model, created))


def _model(model: str, created: int) -> dict[str, object]:
    return {"id": model, "object": "model", "created": created, "owned_by": OWNED_BY}
