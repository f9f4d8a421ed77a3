"""InferenceModels (``inference.networking.x-k8s.io/v1alpha2``): the per-model policy of the
Gateway API Inference Extension before v1.0, which Alibaba ACK's gateway still uses.

An InferenceModel names the model clients ask for (``modelName``), the pool it applies to
(``poolRef``), how critical its requests are (``criticality``) and, optionally, weighted
``targetModels`` (LoRA adapters or base models) that its requests are split over. epp
applies those whose ``poolRef`` names its pool:

- ``targetModels`` become an exact rule for ``modelName`` in :class:`ModelRewrites`, the
  InferenceModelRewrite machinery: the body's model is rewritten to the target drawn and
  the response's model restored. Weights are set on all targets or on none (none: equal
  shares); a target of weight 0 gets its share, weight/sum, which is nothing.
- ``criticality`` becomes the priority of requests for ``modelName``: Critical 1,
  Standard 0, Sheddable -1 (negative priorities are refused first when the pool is
  saturated). Unset is Standard, as the API lets implementations treat it.

Precedence where the newer kinds name the same model: an InferenceModelRewrite's exact
rule beats an InferenceModel's targets, which beat an InferenceModelRewrite's catch-all;
an InferenceObjective the request names (``x-llm-d-inference-objective``) beats the
model's criticality. The current API wins over the one it replaced, as the llm-d.ai group
wins over the older one (:mod:`epp.requestcontrol.pool_policies`).

An InferenceModel epp cannot use (no modelName, an unknown criticality, weights that are
not integers from 0 to 1,000,000 or do not add up to more than 0, a target named twice,
more than 10 targets) is ignored, and so is one whose modelName an older InferenceModel
of the pool already has (the API's rule: the oldest creationTimestamp keeps the name).
Each is logged once, when it starts being ignored, and counted in
``epp_inference_models_ignored``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from epp.api.openai import model_name_problem
from epp.observability import metrics
from epp.requestcontrol.objectives import Objectives
from epp.requestcontrol.rewrite import ModelRewrites, RewriteRule

__all__ = [
    "CRITICALITY_PRIORITIES",
    "IGNORED_REASONS",
    "InferenceModels",
    "ModelPolicies",
    "policies_from_objects",
]

log = logging.getLogger(__name__)

CRITICALITY_PRIORITIES = {"Critical": 1, "Standard": 0, "Sheddable": -1}
IGNORED_REASONS = ("invalid", "duplicate")

# The CRD's bounds (GIE v0.3-v0.5 api/v1alpha2/inferencemodel_types.go); the API server
# enforces them, but a cluster without the CRD's validation must not make epp store more.
_MAX_MODEL_NAME_CHARS = 256
_MAX_TARGET_NAME_CHARS = 253
_MAX_TARGETS = 10
_MAX_WEIGHT = 1_000_000


@dataclass(frozen=True, slots=True)
class ModelPolicies:
    """What the InferenceModels of one pool ask for."""

    rules: tuple[RewriteRule, ...]  # one exact rule per modelName with targets to draw
    priorities: Mapping[str, int]  # modelName -> priority, for those with a criticality
    ignored: Mapping[str, tuple[str, str]]  # "namespace/name" -> (reason, why)


class _Invalid(ValueError):
    pass


def policies_from_objects(objects: Iterable[Mapping[str, Any]], pool_name: str) -> ModelPolicies:
    """The policies of the InferenceModels whose ``poolRef`` names ``pool_name``."""
    mine = [obj for obj in objects if _names_pool(obj, pool_name)]
    mine.sort(key=lambda obj: (_meta(obj, "creationTimestamp"), _meta(obj, "name")))
    rules: list[RewriteRule] = []
    priorities: dict[str, int] = {}
    ignored: dict[str, tuple[str, str]] = {}
    owners: dict[str, str] = {}  # modelName -> the InferenceModel that has it
    for obj in mine:
        key = f"{_meta(obj, 'namespace')}/{_meta(obj, 'name')}"
        try:
            model, priority, rule = _parse(obj["spec"], _meta(obj, "name"))
        except _Invalid as exc:
            ignored[key] = ("invalid", str(exc))
            continue
        owner = owners.setdefault(model, key)
        if owner != key:
            ignored[key] = ("duplicate", f"modelName {model!r} is already {owner}'s (older)")
            continue
        if priority is not None:
            priorities[model] = priority
        if rule is not None:
            rules.append(rule)
    return ModelPolicies(tuple(rules), priorities, ignored)


def _names_pool(obj: Mapping[str, Any], pool_name: str) -> bool:
    spec = obj.get("spec")
    ref = spec.get("poolRef") if isinstance(spec, Mapping) else None
    return (
        isinstance(ref, Mapping)
        and ref.get("name") == pool_name
        and ref.get("kind", "InferencePool") in ("InferencePool", "", None)
    )


def _meta(obj: Mapping[str, Any], field: str) -> str:
    value = (obj.get("metadata") or {}).get(field)
    return value if isinstance(value, str) else ""


def _parse(spec: Mapping[str, Any], name: str) -> tuple[str, int | None, RewriteRule | None]:
    """(modelName, priority or None, the rewrite rule or None); raises ``_Invalid``."""
    model = spec.get("modelName")
    if not isinstance(model, str) or not model:
        raise _Invalid("it has no modelName")
    problem = model_name_problem(model)
    if problem is None and len(model) > _MAX_MODEL_NAME_CHARS:
        problem = f"is longer than {_MAX_MODEL_NAME_CHARS} characters"
    if problem is not None:
        raise _Invalid(f"modelName {model[:64]!r} {problem}")
    criticality = spec.get("criticality")
    if criticality is not None and criticality not in CRITICALITY_PRIORITIES:
        raise _Invalid(
            f"criticality {str(criticality)[:64]!r} is none of {', '.join(CRITICALITY_PRIORITIES)}"
        )
    priority = None if criticality is None else CRITICALITY_PRIORITIES[criticality]
    targets = spec.get("targetModels") or []
    if not isinstance(targets, list):
        raise _Invalid("targetModels is not a list")
    if len(targets) > _MAX_TARGETS:
        raise _Invalid(f"it has {len(targets)} targetModels; at most {_MAX_TARGETS} are allowed")
    if not targets:
        return model, priority, None
    names, weights = _targets(targets)
    drawn = [(n, w) for n, w in zip(names, weights, strict=True) if w > 0]
    if [n for n, _ in drawn] == [model]:  # every request keeps its model: nothing to rewrite
        return model, priority, None
    rule = RewriteRule(
        frozenset({model}),
        tuple(n for n, _ in drawn),
        tuple(accumulate(w for _, w in drawn)),
        name,
    )
    return model, priority, rule


def _targets(targets: list[Any]) -> tuple[list[str], list[int]]:
    names: list[str] = []
    raw_weights: list[object] = []
    for target in targets:
        if not isinstance(target, Mapping):
            raise _Invalid("a targetModels entry is not an object")
        target_name = target.get("name")
        if not isinstance(target_name, str) or not target_name:
            raise _Invalid("a targetModels entry has no name")
        problem = model_name_problem(target_name)
        if problem is None and len(target_name) > _MAX_TARGET_NAME_CHARS:
            problem = f"is longer than {_MAX_TARGET_NAME_CHARS} characters"
        if problem is not None:
            raise _Invalid(f"target model {target_name[:64]!r} {problem}")
        if target_name in names:
            raise _Invalid(f"target model {target_name!r} is named twice")
        names.append(target_name)
        raw_weights.append(target.get("weight"))
    if all(weight is None for weight in raw_weights):
        return names, [1] * len(names)
    weights = [
        w
        for w in raw_weights
        if isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= _MAX_WEIGHT
    ]
    if len(weights) != len(raw_weights):
        shown = [str(w)[:16] if w is not None else "unset" for w in raw_weights]
        raise _Invalid(
            f"weights must be set on every target or none, each an integer from 0 to "
            f"{_MAX_WEIGHT:,}; got {', '.join(shown)}"
        )
    if sum(weights) == 0:
        raise _Invalid("every target has weight 0: no target can be drawn")
    return names, weights


class InferenceModels:
    """Applies a pool's InferenceModels to the director's rewrites and objectives."""

    def __init__(self, pool_name: str, *, rewrites: ModelRewrites, objectives: Objectives) -> None:
        self._pool_name = pool_name
        self._rewrites = rewrites
        self._objectives = objectives
        self._reported: dict[str, str] = {}  # key -> why, as last logged

    def apply(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """Install the policies of ``objects`` (every InferenceModel watched)."""
        policies = policies_from_objects(objects, self._pool_name)
        self._rewrites.replace_inference_models(policies.rules)
        self._objectives.replace_model_priorities(policies.priorities)
        reported = {}
        for key, (_reason, why) in policies.ignored.items():
            if self._reported.get(key) != why:
                log.error("InferenceModel %s is ignored: %s", key, why)
            reported[key] = why
        self._reported = reported
        for reason in IGNORED_REASONS:
            count = sum(1 for r, _ in policies.ignored.values() if r == reason)
            metrics.INFERENCE_MODELS_IGNORED.labels(reason).set(count)
