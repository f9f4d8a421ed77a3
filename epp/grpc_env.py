"""gRPC core settings epp puts in its environment before grpc is imported.

grpc reads ``GRPC_EXPERIMENTS`` once, when the module loads, so this runs before
``epp serve`` imports its server. An operator who sets ``GRPC_EXPERIMENTS`` (even to
the empty string, grpc's own defaults) keeps exactly that.

``-event_engine_listener``: connections the server accepts are served by grpc's iomgr
endpoints rather than EventEngine ones. EventEngine's endpoints read and write on a
pool of threads of their own and hand each event on to the completion-queue thread
that grpc.aio polls, then to the event loop; iomgr's are polled by that thread itself.
Measured behind Envoy on 2 cores: 400 KB bodies, 38 context switches per request
against 53 and 0.94x the CPU; the routing benchmark (shared-prefix at the knee), 0.90
to 0.96x epp's CPU per request (README, "What epp costs").
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

__all__ = ["GRPC_EXPERIMENTS", "apply_grpc_defaults"]

GRPC_EXPERIMENTS = "-event_engine_listener"


def apply_grpc_defaults(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set ``GRPC_EXPERIMENTS`` unless the operator did or grpc is loaded already (then
    it is too late to matter); True if it was set."""
    if "GRPC_EXPERIMENTS" in environ or "grpc" in sys.modules:
        return False
    environ["GRPC_EXPERIMENTS"] = GRPC_EXPERIMENTS
    return True
