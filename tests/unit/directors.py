"""Directors over an in-memory fleet, for the unit tests that route requests: a store of
pods scraped just now, and a Director with the default scheduling profile over it.

The addresses of the pods are here too, so every test names a pod the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from epp.datalayer.endpoint import Metrics
from epp.datalayer.store import EndpointStore
from epp.director import Director
from epp.scheduling.registry import PluginRegistry, register_builtin_plugins
from epp.scheduling.scheduler import build_scheduler, default_scheduler_config

POD_A, POD_B, POD_C, POD_D = "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000"


def fresh_store(pods: Mapping[str, Iterable[str]], **metrics: Any) -> EndpointStore:
    """A store of ``pods`` (address -> models served), each scraped just now.

    ``metrics`` are the fields of every pod's ``Metrics`` (``waiting_requests=10``).
    """
    store = EndpointStore()
    store.replace([(address, frozenset(models)) for address, models in pods.items()])
    for endpoint in store.all():
        endpoint.metrics = Metrics(**metrics, updated_at=time.monotonic())
    return store


def director_over(store: EndpointStore, **options: Any) -> Director:
    """A director over ``store`` with the default scheduling profile; ``options`` are the
    Director's keyword arguments (``pick_endpoints=False``, ``fallbacks=...``)."""
    registry = register_builtin_plugins(PluginRegistry())
    return Director(store, build_scheduler(default_scheduler_config(), registry), **options)
