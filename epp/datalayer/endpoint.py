"""An endpoint (one model-server address) and the metrics last scraped from it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar, dataclass_transform

__all__ = ["DEFAULT_STALENESS_S", "NO_LABELS", "Endpoint", "Metrics"]

# How old metrics may be before they count as stale (the reference EPP's threshold):
# the default of --metrics-staleness-threshold, which admission, the prefer-fresh
# filter, the pool metrics and the scraper's back-off all follow.
DEFAULT_STALENESS_S = 2.0
NO_LABELS: Mapping[str, str] = MappingProxyType({})

_Record = TypeVar("_Record")


@dataclass_transform(frozen_default=True)
def _read_only(cls: type[_Record]) -> type[_Record]:
    """A slots dataclass that the type checker holds frozen but that is built at a
    plain class's cost: ``frozen=True`` sets every field through ``object.__setattr__``,
    3x the time, and epp's routing process builds one :class:`Metrics` per scrape
    (5,000 a second at 256 pods; ``benchmarks/bench_scrape_fleet.py``)."""
    return dataclass(slots=True)(cls)


@_read_only
class Metrics:
    """One scrape of a model server, replaced whole on every successful scrape, never
    changed (readers keep a reference and expect it to hold still).

    ``updated_at`` is a ``time.monotonic()`` reading; 0.0 means never scraped.
    """

    waiting_requests: int = 0
    running_requests: int = 0
    kv_cache_usage: float = 0.0  # fraction of KV-cache blocks in use, 0..1
    kv_block_size: int | None = None  # tokens per KV block, from cache_config_info
    kv_num_blocks: int | None = None
    # LoRA adapters from vllm:lora_requests_info (its newest series): those loaded and
    # running, those waiting to load, and how many may be loaded at once (None: the
    # server reports no LoRA info, as vLLM does until an adapter is first used).
    lora_running: frozenset[str] = frozenset()
    lora_waiting: frozenset[str] = frozenset()
    max_lora: int | None = None
    # The model names the waiting/running/KV series carry (vLLM's model_name label: its
    # first served model name); empty when the server labels none.
    models: frozenset[str] = frozenset()
    updated_at: float = 0.0


@dataclass(eq=False, slots=True)
class Endpoint:
    """A model-server address and its live state.

    Identity-hashed: the same ``Endpoint`` object lives as long as discovery keeps the
    address, so per-endpoint state (the prefix index, in-flight counts) can key on it.

    ``models`` is the set of model names the endpoint serves; ``None`` means it serves
    whatever it is asked for (pool mode, where every pod runs the pool's model).

    ``labels`` are the pod's Kubernetes labels (none for static endpoints), which label
    filters select on. ``name`` identifies the endpoint the way the reference EPP does,
    ``namespace/pod-rank-N`` (N: the target port's index in the pool) on Kubernetes;
    empty for static endpoints, whose :attr:`identity` is then their address.
    """

    address: str  # "ip:port", exactly what goes into x-gateway-destination-endpoint
    models: frozenset[str] | None = None
    metrics: Metrics = field(default_factory=Metrics)
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)
    name: str = ""
    # Requests epp routed here whose ext_proc stream has not yet ended. Scraped queue
    # depth lags by a scrape interval; this does not, so a burst cannot pile onto one pod.
    # A plain field because scorers read it for every candidate; request control changes
    # it through request_routed() and request_finished() only. With replicas sharing
    # their load (epp/sync) it also holds what the other replicas report in flight here
    # (``remote_inflight``), so every reader sees the pool's load for no extra work.
    inflight_requests: int = 0
    remote_inflight: int = 0  # the part of inflight_requests other replicas reported
    # Consecutive failed scrapes, and the last error text (logged only when it changes).
    scrape_failures: int = 0
    last_scrape_error: str | None = None
    scrape_errors_total: int = 0  # every failed scrape since the endpoint appeared

    def request_routed(self) -> None:
        """epp sent a request here: it counts as in flight until :meth:`request_finished`."""
        self.inflight_requests += 1

    def request_finished(self) -> None:
        """A request counted by :meth:`request_routed` ended (completed, failed or reset)."""
        self.inflight_requests -= 1

    def set_remote_inflight(self, count: int) -> None:
        """Other replicas now report ``count`` requests in flight here (replacing what
        they reported before); this replica's own count is unchanged."""
        self.inflight_requests += count - self.remote_inflight
        self.remote_inflight = count

    @property
    def local_inflight(self) -> int:
        """Requests this replica routed here whose streams have not ended."""
        return self.inflight_requests - self.remote_inflight

    @property
    def identity(self) -> str:
        """``name`` when discovery gave one, else the address: what session tokens carry."""
        return self.name or self.address

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models

    def served_models(self) -> frozenset[str] | None:
        """The models clients may ask this endpoint for, as far as epp knows: the
        configured ones; else those its last scrape named (the engine's model, and the
        LoRA adapters it reported running or waiting); ``None`` when neither says.

        vLLM reports an adapter only while requests use it, so an idle adapter is
        missing here though the server would serve it.
        """
        if self.models is not None:
            return self.models
        metrics = self.metrics
        if not metrics.models:
            return None
        return metrics.models | metrics.lora_running | metrics.lora_waiting

    def is_fresh(self, staleness_s: float, now: float | None = None) -> bool:
        """True when the last successful scrape is younger than ``staleness_s``."""
        if self.metrics.updated_at == 0.0:
            return False
        if now is None:
            now = time.monotonic()
        return now - self.metrics.updated_at <= staleness_s

    def __repr__(self) -> str:
        return f"Endpoint({self.address!r})"
