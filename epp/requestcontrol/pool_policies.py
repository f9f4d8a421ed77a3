"""Keeps a pool's InferenceObjectives, InferenceModelRewrites and InferenceModels applied
to the director.

``epp.k8s`` watches the resources; turning them into priorities and rewrite rules is
request control's, so this lives here and ``epp.k8s`` knows nothing of requests.

Both kinds live in two groups: ``llm-d.ai/v1alpha2``, where llm-d moved them, and the
older ``inference.networking.x-k8s.io/v1alpha2``. epp watches both and merges them, so
a cluster half-way through moving its objects loses none; an object whose name is in
both groups counts once, as the ``llm-d.ai`` one. (The reference picker instead picks
one group at start: ``llm-d.ai`` when its CRD is installed, ignoring the older group's
objects.) InferenceModel lives only in the older group (see
:mod:`epp.requestcontrol.inference_models` for how it combines with the other two). Every
CRD is optional: one that is not installed is logged once and retried slowly, and
requests route as if it held no objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lightkube import AsyncClient

from epp.k8s.client import INFERENCE_MODEL_RESOURCES, MODEL_REWRITE_RESOURCES, OBJECTIVE_RESOURCES
from epp.k8s.informer import Informer
from epp.requestcontrol.inference_models import InferenceModels
from epp.requestcontrol.objectives import Objectives, priorities_from_objects
from epp.requestcontrol.rewrite import ModelRewrites, rules_from_objects

__all__ = ["PoolPolicies"]


class PoolPolicies:
    """``retry_max_s`` is how often a missing CRD is looked for again."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str,
        pool_name: str,
        objectives: Objectives,
        rewrites: ModelRewrites,
        retry_max_s: float = 10.0,
    ) -> None:
        def watch_merged(
            resources: Sequence[type], apply: Callable[[list[Any]], None]
        ) -> list[Informer]:
            informers: list[Informer] = []

            def on_change(_changed: Mapping[str, Any]) -> None:
                merged: dict[str, Any] = {}
                for informer in reversed(informers):  # the first group's objects win
                    merged.update(informer.objects)
                apply(list(merged.values()))

            informers.extend(
                Informer(
                    client,
                    resource,
                    namespace=namespace,
                    on_change=on_change,
                    backoff_max_s=retry_max_s,
                )
                for resource in resources
            )
            return informers

        models = InferenceModels(pool_name, rewrites=rewrites, objectives=objectives)
        self._informers = [
            *watch_merged(
                OBJECTIVE_RESOURCES,
                lambda objects: objectives.replace(priorities_from_objects(objects, pool_name)),
            ),
            *watch_merged(
                MODEL_REWRITE_RESOURCES,
                lambda objects: rewrites.replace(rules_from_objects(objects, pool_name)),
            ),
            *watch_merged(INFERENCE_MODEL_RESOURCES, models.apply),
        ]

    async def start(self) -> None:
        for informer in self._informers:
            informer.start()

    async def stop(self) -> None:
        for informer in self._informers:
            await informer.stop()
