"""InferenceObjectives and InferenceModelRewrites from the API server reach the director."""

from __future__ import annotations

import pytest
from lightkube import AsyncClient

from epp.requestcontrol.objectives import OBJECTIVE_HEADER, Objectives
from epp.requestcontrol.pool_policies import PoolPolicies
from epp.requestcontrol.rewrite import ModelRewrites
from tests.kube_fake import FakeKubeAPI, inference_model_rewrite, inference_objective
from tests.unit.k8s.conftest import eventually

NS = "inference"


@pytest.mark.asyncio
async def test_objectives_and_rewrites_follow_the_api(
    api: FakeKubeAPI, client: AsyncClient
) -> None:
    api.apply(inference_objective("batch", NS, -1, "pool"))
    api.apply(inference_objective("someone-elses", NS, 7, "other-pool"))
    api.apply(inference_model_rewrite("canary", NS, "pool", [("llama", {"llama-v2": 1})]))
    objectives, rewrites = Objectives(), ModelRewrites()
    policies = PoolPolicies(
        client, namespace=NS, pool_name="pool", objectives=objectives, rewrites=rewrites
    )
    await policies.start()
    try:
        await eventually(lambda: objectives.priority({OBJECTIVE_HEADER: "batch"}) == -1)
        await eventually(lambda: rewrites.target("llama", {}) == "llama-v2")
        assert objectives.priority({OBJECTIVE_HEADER: "someone-elses"}) == 0

        api.apply(inference_objective("batch", NS, 3, "pool"))
        api.delete("inference.networking.x-k8s.io/v1alpha2", "InferenceModelRewrite", NS, "canary")
        await eventually(lambda: objectives.priority({OBJECTIVE_HEADER: "batch"}) == 3)
        await eventually(lambda: rewrites.target("llama", {}) == "llama")
    finally:
        await policies.stop()
