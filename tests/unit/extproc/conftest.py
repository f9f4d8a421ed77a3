"""Fixtures the ext_proc unit tests share: a director over two pods, and the requests
whose metrics and log line were recorded."""

from __future__ import annotations

import time

import pytest

from epp.datalayer.endpoint import Metrics
from epp.datalayer.store import EndpointStore
from epp.director import Director
from epp.observability import request_metrics
from epp.observability.request_metrics import FinishedRequest
from epp.scheduling.registry import PluginRegistry, register_builtin_plugins
from epp.scheduling.scheduler import build_scheduler, default_scheduler_config
from tests.unit.extproc.observed_streams import POD_A, POD_B


@pytest.fixture
def director() -> Director:
    """Two fresh pods serving model "m", the default profile."""
    store = EndpointStore()
    store.replace([(POD_A, frozenset({"m"})), (POD_B, frozenset({"m"}))])
    for endpoint in store.all():
        endpoint.metrics = Metrics(updated_at=time.monotonic())
    registry = register_builtin_plugins(PluginRegistry())
    return Director(store, build_scheduler(default_scheduler_config(), registry))


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[FinishedRequest]:
    """Every request whose metrics and log line were recorded."""
    seen: list[FinishedRequest] = []
    # epp.extproc.stream looks record_finished up on this module at every call.
    monkeypatch.setattr(request_metrics, "record_finished", seen.append)
    return seen
