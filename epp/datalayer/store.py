"""The endpoint table: what discovery found, read by the request path and the scraper."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from epp.datalayer.endpoint import NO_LABELS, Endpoint

__all__ = ["EndpointMeta", "EndpointSpec", "EndpointStore"]

# What discovery reports: an address and the models served there (None = any model).
EndpointSpec = tuple[str, frozenset[str] | None]


@dataclass(frozen=True, slots=True)
class EndpointMeta:
    """What Kubernetes discovery knows of an endpoint beside its address: the reference
    EPP's name for it (``namespace/pod-rank-N``) and its pod's labels."""

    name: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)


_NO_META = EndpointMeta()


class EndpointStore:
    """Endpoints by address.

    Discovery calls :meth:`replace`; an address that stays keeps its ``Endpoint`` object
    (and with it its metrics and in-flight count). Readers get lists that do not change
    under them: every change builds new lists.
    """

    def __init__(self) -> None:
        self._by_address: dict[str, Endpoint] = {}
        self._all: list[Endpoint] = []
        self._by_model: dict[str, list[Endpoint]] = {}
        self._serve_any: list[Endpoint] = []
        self._listeners: list[Callable[[list[Endpoint], list[Endpoint]], None]] = []

    def replace(
        self, specs: Iterable[EndpointSpec], meta: Mapping[str, EndpointMeta] | None = None
    ) -> None:
        """Make the table hold exactly ``specs``; tell listeners what came and went.

        ``meta`` gives, by address, each endpoint's name and labels (none: no name, no
        labels); an endpoint that stays takes on its new ones.
        """
        new_by_address: dict[str, Endpoint] = {}
        added: list[Endpoint] = []
        for address, models in specs:
            about = meta.get(address, _NO_META) if meta else _NO_META
            endpoint = self._by_address.get(address)
            if endpoint is None:
                endpoint = Endpoint(
                    address=address, models=models, labels=about.labels, name=about.name
                )
                added.append(endpoint)
            else:
                endpoint.models = models
                endpoint.labels = about.labels
                endpoint.name = about.name
            new_by_address[address] = endpoint
        removed = [ep for addr, ep in self._by_address.items() if addr not in new_by_address]
        self._by_address = new_by_address
        self._rebuild_indexes()
        for listener in self._listeners:
            listener(added, removed)

    def subscribe(self, listener: Callable[[list[Endpoint], list[Endpoint]], None]) -> None:
        """Call ``listener(added, removed)`` after every change."""
        self._listeners.append(listener)

    def _rebuild_indexes(self) -> None:
        self._all = list(self._by_address.values())
        self._serve_any = [ep for ep in self._all if ep.models is None]
        by_model: dict[str, list[Endpoint]] = {}
        for endpoint in self._all:
            for model in endpoint.models or ():
                by_model.setdefault(model, []).append(endpoint)
        for endpoints in by_model.values():
            endpoints.extend(self._serve_any)
        self._by_model = by_model

    def all(self) -> list[Endpoint]:
        return self._all

    def get(self, address: str) -> Endpoint | None:
        return self._by_address.get(address)

    def serving(self, model: str) -> list[Endpoint]:
        """Endpoints that serve ``model`` (ready or not); do not mutate the result."""
        return self._by_model.get(model, self._serve_any)

    def knows_model(self, model: str) -> bool:
        """False only when no endpoint could serve ``model``: the 404 case."""
        return model in self._by_model or bool(self._serve_any)

    def models(self) -> list[str]:
        return sorted(self._by_model)
