"""Fixtures the ext_proc unit tests share: a director over a store of two pods, and the
requests whose metrics and log line were recorded.

A module that needs another fleet overrides ``store``; ``director`` routes over it.
"""

from __future__ import annotations

import pytest

from epp.datalayer.store import EndpointStore
from epp.director import Director
from epp.observability import request_metrics
from epp.observability.request_metrics import FinishedRequest
from tests.unit.directors import POD_A, POD_B, director_over, fresh_store


@pytest.fixture
def store() -> EndpointStore:
    """Two fresh pods serving model "m"."""
    return fresh_store({POD_A: {"m"}, POD_B: {"m"}})


@pytest.fixture
def director(store: EndpointStore) -> Director:
    """The default profile over ``store``."""
    return director_over(store)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[FinishedRequest]:
    """Every request whose metrics and log line were recorded."""
    seen: list[FinishedRequest] = []
    # epp.extproc.stream looks record_finished up on this module at every call.
    monkeypatch.setattr(request_metrics, "record_finished", seen.append)
    return seen
