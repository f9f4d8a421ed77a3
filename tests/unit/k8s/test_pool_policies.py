"""InferenceObjectives, InferenceModelRewrites and InferenceModels from the API server reach
the director."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from lightkube import AsyncClient

from epp.k8s.client import make_client
from epp.requestcontrol.objectives import OBJECTIVE_HEADER, Objectives
from epp.requestcontrol.pool_policies import PoolPolicies
from epp.requestcontrol.rewrite import ModelRewrites
from tests.kube_fake import (
    FakeKubeAPI,
    inference_model,
    inference_model_rewrite,
    inference_objective,
)
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


LLMD = "llm-d.ai"


def _policies(client: AsyncClient, **kw: float) -> tuple[PoolPolicies, Objectives, ModelRewrites]:
    objectives, rewrites = Objectives(), ModelRewrites()
    policies = PoolPolicies(
        client, namespace=NS, pool_name="pool", objectives=objectives, rewrites=rewrites, **kw
    )
    return policies, objectives, rewrites


@pytest.mark.asyncio
async def test_both_groups_are_merged_and_llm_d_wins_by_name(
    api: FakeKubeAPI, client: AsyncClient
) -> None:
    """Objects of llm-d.ai and of inference.networking.x-k8s.io both apply; a name in both
    counts once, as the llm-d.ai one, and the older one shows again when that goes."""
    api.apply(inference_objective("batch", NS, -1, "pool"))
    api.apply(inference_objective("batch", NS, -5, "pool", group=LLMD))
    api.apply(inference_objective("chat", NS, 10, "pool", group=LLMD))
    api.apply(inference_objective("legacy-only", NS, 2, "pool"))
    api.apply(inference_model_rewrite("alias", NS, "pool", [("old", {"old-v2": 1})]))
    api.apply(
        inference_model_rewrite("alias", NS, "pool", [("llama", {"llama-v3": 1})], group=LLMD)
    )
    api.apply(
        inference_model_rewrite("canary", NS, "pool", [("gemma", {"gemma-v2": 1})], group=LLMD)
    )
    policies, objectives, rewrites = _policies(client)
    await policies.start()
    try:

        def priority(name: str) -> int:
            return objectives.priority({OBJECTIVE_HEADER: name})

        await eventually(lambda: (priority("batch"), priority("chat")) == (-5, 10))
        await eventually(lambda: rewrites.target("gemma", {}) == "gemma-v2")
        assert priority("legacy-only") == 2
        assert rewrites.target("llama", {}) == "llama-v3"
        assert rewrites.target("old", {}) == "old", "the legacy 'alias' is shadowed"

        api.delete(f"{LLMD}/v1alpha2", "InferenceObjective", NS, "batch")
        api.delete(f"{LLMD}/v1alpha2", "InferenceModelRewrite", NS, "alias")
        await eventually(lambda: priority("batch") == -1)
        await eventually(lambda: rewrites.target("old", {}) == "old-v2")
        assert rewrites.target("llama", {}) == "llama"
        assert (priority("chat"), rewrites.target("gemma", {})) == (10, "gemma-v2")
    finally:
        await policies.stop()


@pytest.mark.asyncio
async def test_a_group_whose_crds_are_missing_is_retried_quietly(
    api: FakeKubeAPI, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Without the llm-d.ai CRDs the older group's objects still apply and the missing
    ones are logged once each; once installed, they are picked up."""
    missing = [rt for rt in api.table if rt.group == LLMD]
    assert {rt.kind for rt in missing} == {"InferenceObjective", "InferenceModelRewrite"}
    async with FakeKubeAPI(resources=tuple(rt for rt in api.table if rt.group != LLMD)) as bare:
        kubeconfig = bare.write_kubeconfig(tmp_path / "kubeconfig")
        bare_client = make_client(str(kubeconfig), timeout_s=2.0)
        bare.apply(inference_objective("batch", NS, -1, "pool"))
        policies, objectives, _ = _policies(bare_client, retry_max_s=0.25)
        caplog.set_level(logging.INFO, logger="epp.k8s.informer")
        await policies.start()
        try:
            await eventually(lambda: objectives.priority({OBJECTIVE_HEADER: "batch"}) == -1)
            lists = f"/apis/{LLMD}/v1alpha2/namespaces/{NS}/inferenceobjectives"
            await eventually(lambda: sum(r.path == lists for r in bare.requests) >= 3)

            for rt in missing:
                bare.register(rt)
            bare.apply(inference_objective("chat", NS, 10, "pool", group=LLMD))
            await eventually(lambda: objectives.priority({OBJECTIVE_HEADER: "chat"}) == 10)
            assert objectives.priority({OBJECTIVE_HEADER: "batch"}) == -1
        finally:
            await policies.stop()
            await bare_client.close()
    not_found = [r.getMessage() for r in caplog.records if "not found" in r.getMessage()]
    assert sorted(not_found) == [
        f"{kind}.{LLMD} in {NS}: not found on the API server (CRD not installed?); "
        "retrying every 0.25s"
        for kind in ("InferenceModelRewrite", "InferenceObjective")
    ]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


GIE_X = "inference.networking.x-k8s.io/v1alpha2"


@pytest.mark.asyncio
async def test_inference_models_follow_the_api(api: FakeKubeAPI, client: AsyncClient) -> None:
    """An InferenceModel's targets and criticality apply, change and go with the object;
    one that the API server stores but epp cannot use is reported and the others apply."""
    api.apply(inference_model("travel", NS, "pool", "travel", "Standard", {"travel-v2": 1}))
    api.apply(inference_model("batch", NS, "pool", "batch", "Sheddable"))
    api.apply(inference_model("elsewhere", NS, "other-pool", "batch-x", "Sheddable"))
    api.apply(inference_model("broken", NS, "pool", "broken", "Sheddable", {"a": 0}))
    policies, objectives, rewrites = _policies(client)
    await policies.start()
    try:
        await eventually(lambda: rewrites.target("travel", {}) == "travel-v2")
        await eventually(lambda: objectives.priority({}, "batch") == -1)
        assert objectives.priority({}, "batch-x") == 0
        assert (rewrites.target("broken", {}), objectives.priority({}, "broken")) == ("broken", 0)
        assert objectives.priority({OBJECTIVE_HEADER: "batch"}, "travel") == 0

        api.apply(inference_model("batch", NS, "pool", "batch", "Critical"))
        api.delete(GIE_X, "InferenceModel", NS, "travel")
        await eventually(lambda: objectives.priority({}, "batch") == 1)
        await eventually(lambda: rewrites.target("travel", {}) == "travel")
    finally:
        await policies.stop()
