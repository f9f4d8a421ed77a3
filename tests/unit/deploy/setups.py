"""deploy/ and its setups: the files a user applies together, as Kubernetes objects."""

from __future__ import annotations

from pathlib import Path

from .manifests import Obj, load_documents

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
SETUPS = {
    "kubernetes": ("kubernetes/*.yaml", "prometheus/*monitor-*.yaml"),
    "envoy-gateway": ("gateway/*.yaml", "gateway/envoy-gateway/*.yaml"),
    "istio": ("gateway/*.yaml", "gateway/istio/*.yaml"),
    # The ACK-style example: a v1alpha2 pool with InferenceModels behind the Envoy Gateway
    # setup's Gateway and body-based router.
    "ack": ("ack/*.yaml", "gateway/body-based-router.yaml", "gateway/envoy-gateway/*.yaml"),
}
GATEWAY_SETUPS = ("envoy-gateway", "istio", "ack")


def setup_objects(setup: str) -> list[Obj]:
    """Every object of the files of ``setup`` (a key of SETUPS)."""
    paths = sorted({path for pattern in SETUPS[setup] for path in DEPLOY.glob(pattern)})
    assert paths, f"no files for {setup}"
    return [obj for path in paths for obj in load_documents(path)]
