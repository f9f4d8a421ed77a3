"""Keeps a pool's InferenceObjectives and InferenceModelRewrites applied to the director.

``epp.k8s`` watches the resources; turning them into priorities and rewrite rules is
request control's, so this lives here and ``epp.k8s`` knows nothing of requests.

Both are optional CRDs (inference.networking.x-k8s.io/v1alpha2): when they are not
installed the informers log it and keep retrying slowly, and requests route with no
rewrites and priority 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightkube import AsyncClient

from epp.k8s.client import InferenceModelRewrite, InferenceObjective
from epp.k8s.informer import Informer
from epp.requestcontrol.objectives import Objectives, priorities_from_objects
from epp.requestcontrol.rewrite import ModelRewrites, rules_from_objects

__all__ = ["PoolPolicies"]


class PoolPolicies:
    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str,
        pool_name: str,
        objectives: Objectives,
        rewrites: ModelRewrites,
    ) -> None:
        def on_objectives(objects: Mapping[str, Any]) -> None:
            objectives.replace(priorities_from_objects(objects.values(), pool_name))

        def on_rewrites(objects: Mapping[str, Any]) -> None:
            rewrites.replace(rules_from_objects(objects.values(), pool_name))

        self._informers = [
            Informer(client, InferenceObjective, namespace=namespace, on_change=on_objectives),
            Informer(client, InferenceModelRewrite, namespace=namespace, on_change=on_rewrites),
        ]

    async def start(self) -> None:
        for informer in self._informers:
            informer.start()

    async def stop(self) -> None:
        for informer in self._informers:
            await informer.stop()
