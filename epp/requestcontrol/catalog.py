"""The models a pool serves, as ``GET /v1/models`` lists them.

An endpoint says what it serves through :meth:`~epp.datalayer.endpoint.Endpoint.served_models`
(its configured models, or what its metrics name). The pool's models are the union over
its ready endpoints that say; an endpoint that says nothing (an engine that labels no
model) adds nothing. The list is sorted and bounded: OpenAI's list has no pages, and a
pool of ``MAX_LISTED_MODELS`` distinct models is far past any real one.
"""

from __future__ import annotations

from collections.abc import Iterable

from epp.datalayer.endpoint import Endpoint

__all__ = ["MAX_LISTED_MODELS", "listed", "pool_models"]

# Each name is at most 1024 bytes: the answer stays well under Envoy's message limits.
MAX_LISTED_MODELS = 256


def pool_models(endpoints: Iterable[Endpoint]) -> set[str] | None:
    """The union of what ``endpoints`` serve; ``None`` when none of them says."""
    models: set[str] = set()
    known = False
    for endpoint in endpoints:
        served = endpoint.served_models()
        if served is not None:
            known = True
            models |= served
    return models if known else None


def listed(models: Iterable[str]) -> list[str]:
    """``models`` as the list shows them: sorted, the first ``MAX_LISTED_MODELS``."""
    return sorted(models)[:MAX_LISTED_MODELS]
