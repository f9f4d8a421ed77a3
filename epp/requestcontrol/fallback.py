"""Model fallback: per model, the models that may serve its requests when it cannot.

When no ready, healthy endpoint serves a request's model, the director sends the request
to the first fallback model that has one, rewriting the body's ``model``. Fallbacks are
not followed transitively: each model lists the whole chain it accepts.

    fallbacks = ModelFallbacks({"llama-70b": ["llama-8b", "qwen-7b"]})
    fallbacks.of("llama-70b")   # ("llama-8b", "qwen-7b")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["ModelFallbacks"]


class ModelFallbacks:
    def __init__(self, fallbacks: Mapping[str, Sequence[str]] | None = None) -> None:
        chains: dict[str, tuple[str, ...]] = {}
        for model, chain in (fallbacks or {}).items():
            if model in chain:
                raise ValueError(f"model {model!r} lists itself as a fallback")
            if len(set(chain)) != len(chain):
                raise ValueError(f"model {model!r} lists a fallback twice: {list(chain)}")
            if chain:
                chains[model] = tuple(chain)
        self._chains = chains

    def of(self, model: str, requested: str = "") -> tuple[str, ...]:
        """The fallbacks of ``model`` (the one sent upstream); when it has none and a
        rewrite changed it, those of ``requested`` (the one the client asked for)."""
        chain = self._chains.get(model)
        if chain is None and requested and requested != model:
            chain = self._chains.get(requested)
        return chain or ()

    def __bool__(self) -> bool:
        return bool(self._chains)
