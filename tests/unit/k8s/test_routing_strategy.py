"""The pool's routing-strategy annotation picks the scheduling profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from grpc_health.v1 import health

from epp.config import Config, KubernetesConfig, build_scheduler_from_config
from epp.datalayer.kube_discovery import PoolSpec
from epp.datalayer.store import EndpointStore
from epp.director import Director
from epp.observability.health import HealthReporter
from epp.scheduling.scheduler import Scheduler
from epp.server import _KubernetesParts
from tests.kube_fake import FakeKubeAPI


def scorer_types(director: Director) -> set[str]:
    scheduler = director.scheduler
    assert isinstance(scheduler, Scheduler)  # the director sees only its protocol
    return {
        timing.typed_name.type for timing in scheduler.timings if timing.extension_point == "scorer"
    }


@pytest.mark.asyncio
async def test_annotation_swaps_the_profile(api: FakeKubeAPI, tmp_path: Path) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    config = Config(kubernetes=KubernetesConfig(pool_name="p", kubeconfig=str(kubeconfig)))
    store = EndpointStore()
    director = Director(store, build_scheduler_from_config(config))
    parts = _KubernetesParts(
        config, store, director, HealthReporter(health.aio.HealthServicer(), needs_leadership=False)
    )
    configured = scorer_types(director)
    assert "prefix-cache-scorer" in configured

    parts._on_pool_change(PoolSpec({"a": "b"}, (8000,), "DEFAULT"))
    assert scorer_types(director) == {
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "inflight-load-scorer",
    }
    parts._on_pool_change(PoolSpec({"a": "b"}, (8000,), "PREFIX_CACHE"))
    assert "prefix-cache-scorer" in scorer_types(director)
    parts._on_pool_change(PoolSpec({"a": "b"}, (8000,), "NO_SUCH_STRATEGY"))
    assert scorer_types(director) == configured
    await parts.stop()
