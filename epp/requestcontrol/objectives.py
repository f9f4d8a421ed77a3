"""InferenceObjectives: a request names one in ``x-llm-d-inference-objective`` (or the
legacy ``x-gateway-inference-objective``) and gets its priority. Negative priorities are
sheddable: they are the first refused when the pool is saturated. A request without the
header, or naming an unknown objective, has the priority of its model's InferenceModel
criticality (:mod:`epp.requestcontrol.inference_models`), else 0: an objective the
request names is the current API and more specific than its model's, so it wins.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["OBJECTIVE_HEADER", "OBJECTIVE_HEADERS", "Objectives", "priorities_from_objects"]

log = logging.getLogger(__name__)

# The reference EPP's current name, then the Gateway API Inference Extension's, which it
# still reads: the first present wins.
OBJECTIVE_HEADER = "x-llm-d-inference-objective"
OBJECTIVE_HEADERS = (OBJECTIVE_HEADER, "x-gateway-inference-objective")


def priorities_from_objects(objects: Iterable[Mapping[str, Any]], pool_name: str) -> dict[str, int]:
    """Objective name → priority, for the InferenceObjectives that name ``pool_name``."""
    priorities: dict[str, int] = {}
    for obj in objects:
        spec = obj.get("spec") or {}
        if (spec.get("poolRef") or {}).get("name") != pool_name:
            continue
        name = (obj.get("metadata") or {}).get("name")
        priority = spec.get("priority", 0)
        if not isinstance(name, str) or not isinstance(priority, int) or isinstance(priority, bool):
            log.error(
                "InferenceObjective %s has a non-integer priority %r; ignored", name, priority
            )
            continue
        priorities[name] = priority
    return priorities


class Objectives:
    """Priorities by objective name: ``configured`` ones (the config file's
    ``objectives``, for deployments without the CRDs), overridden by name by those
    :meth:`replace` installs from the watched InferenceObjectives."""

    def __init__(self, configured: Mapping[str, int] | None = None) -> None:
        self._configured = dict(configured or {})
        self._priorities = dict(self._configured)
        self._by_model: dict[str, int] = {}

    def replace(self, priorities: Mapping[str, int]) -> None:
        self._priorities = {**self._configured, **priorities}

    def replace_model_priorities(self, priorities: Mapping[str, int]) -> None:
        """Priorities by the model a request asks for (InferenceModel criticalities)."""
        self._by_model = dict(priorities)

    def priority(self, headers: Mapping[str, str], model: str = "") -> int:
        """The priority of the objective ``headers`` name, else of ``model`` (the one
        the client asked for), else 0."""
        name = headers.get(OBJECTIVE_HEADER) or headers.get(OBJECTIVE_HEADERS[1])
        if name:
            priority = self._priorities.get(name)
            if priority is not None:
                return priority
        return self._by_model.get(model, 0)
