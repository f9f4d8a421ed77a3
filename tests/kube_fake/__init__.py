"""An HTTP fake of the Kubernetes API server for epp's tests; see `server.py`."""

from .objects import (
    inference_model,
    inference_model_rewrite,
    inference_objective,
    inference_pool_v1,
    inference_pool_v1alpha2,
    lease,
    pod,
)
from .resources import ResourceType
from .server import FakeKubeAPI, SeenRequest

__all__ = [
    "FakeKubeAPI",
    "ResourceType",
    "SeenRequest",
    "inference_model",
    "inference_model_rewrite",
    "inference_objective",
    "inference_pool_v1",
    "inference_pool_v1alpha2",
    "lease",
    "pod",
]
