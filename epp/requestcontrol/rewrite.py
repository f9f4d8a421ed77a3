"""Model rewrite and traffic splitting (InferenceModelRewrite, and a header override).

A rule maps an exact model name (or, with no ``matches``, every model) to weighted target
models; each request draws one target by weight. Across rewrites for the same pool, an
exact match beats a catch-all, then the oldest resource wins, then the first rule in it,
as the Gateway API Inference Extension specifies. The older InferenceModels
(:mod:`epp.requestcontrol.inference_models`) add exact rules of their own, installed
with :meth:`ModelRewrites.replace_inference_models`: an InferenceModelRewrite's exact rule
for a model beats an InferenceModel's (the current API over the one it replaced), which
beats an InferenceModelRewrite's catch-all (exact over catch-all). The request header
``x-llm-d-model-name-rewrite`` (or the legacy ``x-gateway-model-name-rewrite``) overrides
every rule, but only where the operator says the gateway sets it (``honour_header``): a
header a client can send must not choose the model its request is served by, past the
operator's rules.
"""

from __future__ import annotations

import logging
import random
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from epp.api.openai import model_name_problem
from epp.errors import BadRequest

__all__ = [
    "MODEL_REWRITE_HEADER",
    "MODEL_REWRITE_HEADERS",
    "ModelRewrites",
    "RewriteRule",
    "rules_from_objects",
]

log = logging.getLogger(__name__)

# The reference EPP's current name, then the legacy one it still reads (first present wins).
MODEL_REWRITE_HEADER = "x-llm-d-model-name-rewrite"
MODEL_REWRITE_HEADERS = (MODEL_REWRITE_HEADER, "x-gateway-model-name-rewrite")


@dataclass(frozen=True, slots=True)
class RewriteRule:
    models: frozenset[str]  # exact matches; empty = every model
    targets: tuple[str, ...]
    cumulative_weights: tuple[int, ...]
    name: str = ""  # the InferenceModelRewrite's (its metric counts decisions by it)

    def draw(self, rng: random.Random) -> str:
        if len(self.targets) == 1:
            return self.targets[0]
        point = rng.randrange(self.cumulative_weights[-1])
        return self.targets[bisect_right(self.cumulative_weights, point)]


def rules_from_objects(objects: Iterable[Mapping[str, Any]], pool_name: str) -> list[RewriteRule]:
    """The rules of the InferenceModelRewrites that name ``pool_name``, oldest first.

    A malformed rewrite is skipped with an error in the log; the others still apply.
    """
    mine = [
        obj
        for obj in objects
        if ((obj.get("spec") or {}).get("poolRef") or {}).get("name") == pool_name
    ]
    mine.sort(
        key=lambda obj: (
            (obj.get("metadata") or {}).get("creationTimestamp") or "",
            (obj.get("metadata") or {}).get("name") or "",
        )
    )
    rules: list[RewriteRule] = []
    for obj in mine:
        name = (obj.get("metadata") or {}).get("name")
        try:
            rules.extend(_parse_rules(obj["spec"].get("rules") or [], str(name or "")))
        except (KeyError, TypeError, ValueError) as exc:
            log.error("InferenceModelRewrite %s is invalid and ignored: %s", name, exc)
    return rules


def _parse_rules(documents: list[Mapping[str, Any]], name: str = "") -> list[RewriteRule]:
    rules = []
    for document in documents:
        models = frozenset(str(match["model"]["value"]) for match in document.get("matches") or ())
        targets = document.get("targets") or []
        if not targets:
            raise ValueError("a rule has no targets")
        names = tuple(str(target["modelRewrite"]) for target in targets)
        for name in names:
            problem = model_name_problem(name)
            if problem is not None:
                raise ValueError(f"target model {name[:64]!r} {problem}")
        weights = [target.get("weight") for target in targets]
        if all(weight is None for weight in weights):
            weights = [1] * len(targets)
        if any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in weights):
            raise ValueError(f"weights must all be set and at least 1, got {weights}")
        rules.append(RewriteRule(models, names, tuple(accumulate(weights)), name))
    return rules


class ModelRewrites:
    """Which model a request is sent to; replace the rules whenever the rewrites change."""

    def __init__(
        self,
        rules: Iterable[RewriteRule] = (),
        *,
        seed: int | None = None,
        honour_header: bool = False,
    ) -> None:
        self._rng = random.Random(seed)
        self.honour_header = honour_header
        self._rewrite_rules: list[RewriteRule] = []
        self._model_rules: list[RewriteRule] = []
        self.replace(rules)

    def replace(self, rules: Iterable[RewriteRule]) -> None:
        """Install the InferenceModelRewrites' rules, oldest resource first."""
        self._rewrite_rules = list(rules)
        self._rebuild()

    def replace_inference_models(self, rules: Iterable[RewriteRule]) -> None:
        """Install the InferenceModels' rules (exact ones, one per model name)."""
        self._model_rules = [rule for rule in rules if rule.models]
        self._rebuild()

    def _rebuild(self) -> None:
        exact: dict[str, RewriteRule] = {}
        catch_all: RewriteRule | None = None
        # Oldest resource first, rules in order: the first one wins; InferenceModels last.
        for rule in [*self._rewrite_rules, *self._model_rules]:
            if not rule.models:
                catch_all = catch_all or rule
            for model in rule.models:
                exact.setdefault(model, rule)
        self._exact = exact
        self._catch_all = catch_all

    def target(self, model: str, headers: Mapping[str, str]) -> str:
        """The model to send to: the header's (when honoured), a rule's draw, or ``model``
        unchanged. Raises ``BadRequest`` for a header that is no model name."""
        return self.decide(model, headers)[0]

    def decide(self, model: str, headers: Mapping[str, str]) -> tuple[str, RewriteRule | None]:
        """:meth:`target`, and the rule that chose it (``None``: no rule did)."""
        if self.honour_header:
            for name in MODEL_REWRITE_HEADERS:
                override = headers.get(name)
                if override:
                    problem = model_name_problem(override)
                    if problem is not None:
                        raise BadRequest(f"the model in {name} {problem}", code="invalid_model")
                    return override, None
        rule = self._exact.get(model) or self._catch_all
        return (model, None) if rule is None else (rule.draw(self._rng), rule)
