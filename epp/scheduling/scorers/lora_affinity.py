"""``lora-affinity-scorer``: prefer endpoints where the requested LoRA adapter is loaded.

Reads what the data layer scrapes from ``vllm:lora_requests_info`` (``Metrics.
lora_running``, ``lora_waiting``, ``max_lora``), for the model the request is sent as
(after any rewrite). The reference's scores, checked in its order:

=====  =====================================================================
1.0    the adapter is running on the endpoint (or, see below, epp predicts it
       is still loaded there)
0.8    it is not, but the endpoint has a free adapter slot (running + waiting
       adapters < ``max_lora``)
0.6    it is waiting to be loaded there (and no slot is free)
0.0    no slot is free and the adapter is neither running nor waiting
=====  =====================================================================

An endpoint that reports no LoRA info has no slots (``max_lora`` unknown counts as 0).
When no candidate reports any (``max_lora`` is None on all: the data layer sets the three
fields from one series), every score is 0, and :meth:`LoraAffinityScorer.add_scores`
returns after one pass over the candidates: in the default profile, a fleet without
adapters pays about 7 µs per 256 endpoints for this scorer instead of a loop per endpoint.

vLLM's metric names the adapters of running and waiting *requests*, not those loaded:
once an adapter's requests end, every endpoint looks alike (a free slot, 0.8), and
the next request for it lands anywhere and loads it again, evicting another. So, unless
``predictResidency`` is false (the reference's behaviour), the scorer also remembers the
adapters epp itself sent to each endpoint, most recent last, and predicts what vLLM's
LRU of ``max_lora`` GPU slots holds: the adapters running there now, then the most
recently sent others known as adapters (reported as such by an endpoint at some time, or
sent to a LoRA-enabled endpoint whose metrics name another model as their base: the base
model never appears in the metric, and it holds no slot), ``max_lora`` in all. A
predicted adapter scores 1.0 like a running one. Memory is bounded whatever clients send:
``SENT_PER_SLOT`` names per slot per endpoint, and ``KNOWN_ADAPTERS`` learned names.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.types import (
    CycleState,
    EndpointRemovalHook,
    LLMRequest,
    PostPick,
    ScoreAdder,
    Scorer,
    TypedName,
)

__all__ = ["KNOWN_ADAPTERS", "SENT_PER_SLOT", "TYPE", "LoraAffinityScorer", "factory"]

TYPE = "lora-affinity-scorer"
# In the cycle: whether a candidate has the request's adapter loaded (scores 1.0); see
# adapter_loaded(), which the no-hit-lru-scorer asks.
_ADAPTER_LOADED = f"{TYPE}/adapter-loaded"
# Adapter names learned from the endpoints' metrics; past this, the oldest is forgotten.
KNOWN_ADAPTERS = 4096
# Models remembered per endpoint and adapter slot: room for base-model requests (and
# names not yet known as adapters) between the adapter requests that matter.
SENT_PER_SLOT = 4


class LoraAffinityScorer(NamedPlugin):
    """See the module docstring for the scores. ``on_pick`` records where adapters went."""

    __slots__ = ("_known", "_predict", "_sent")

    TYPE = TYPE

    def __init__(self, name: str | None = None, *, predict_residency: bool = True) -> None:
        super().__init__(name)
        self._predict = predict_residency
        self._known: OrderedDict[str, None] = OrderedDict()
        # Per endpoint, the models epp sent there, most recent last.
        self._sent: dict[Endpoint, OrderedDict[str, None]] = {}

    @property
    def predict_residency(self) -> bool:
        return self._predict

    def add_scores(
        self,
        cycle: CycleState,
        request: LLMRequest,
        endpoints: Sequence[Endpoint],
        weight: float,
        totals: list[float] | None,
    ) -> list[float]:
        if _no_lora_info(endpoints):  # all 0
            cycle[_ADAPTER_LOADED] = False
            return totals if totals is not None else [0.0] * len(endpoints)
        scores = self.score(cycle, request, endpoints)
        if totals is None:
            return [weight * s for s in scores]
        return [t + weight * s for t, s in zip(totals, scores, strict=True)]

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        adapter = request.model
        if self._predict:
            for endpoint in endpoints:
                metrics = endpoint.metrics
                if metrics.lora_running or metrics.lora_waiting:
                    self._learn((*metrics.lora_running, *metrics.lora_waiting))
        scores: list[float] = []
        for endpoint in endpoints:
            metrics = endpoint.metrics
            running, waiting = metrics.lora_running, metrics.lora_waiting
            max_lora = metrics.max_lora or 0
            if adapter in running or (self._predict and self._resident(endpoint, adapter)):
                scores.append(1.0)
            elif len(running) + len(waiting) < max_lora:
                scores.append(0.8)
            elif adapter in waiting:
                scores.append(0.6)
            else:
                scores.append(0.0)
        cycle[_ADAPTER_LOADED] = 1.0 in scores
        return scores

    def adapter_loaded(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> bool:
        """Whether a candidate has the request's model loaded as an adapter (scores
        1.0), worked out once per cycle, whichever plugin asks first."""
        loaded: bool | None = cycle.get(_ADAPTER_LOADED)
        if loaded is None:
            if _no_lora_info(endpoints):
                loaded = cycle[_ADAPTER_LOADED] = False
            else:
                loaded = 1.0 in self.score(cycle, request, endpoints)
        return loaded

    def on_pick(self, cycle: CycleState, request: LLMRequest, chosen: Endpoint) -> None:
        if not self._predict:
            return
        model = request.model
        metrics = chosen.metrics
        if model in metrics.models:
            return  # the server's base model: it holds no adapter slot
        # Recorded even before the endpoint's first scrape that reports LoRA info (vLLM
        # reports none until an adapter is first used): otherwise the first adapters sent
        # to a fresh pod would be forgotten, and their next requests sent anywhere.
        slots = metrics.max_lora or 1
        if metrics.max_lora and metrics.models:
            # Sent to a LoRA-enabled server as a model its metrics do not name as its
            # base: an adapter, known now rather than when a scrape happens to catch it
            # running (an idle pod is scraped slowly, and a short request can be missed).
            self._learn((model,))
        sent = self._sent.setdefault(chosen, OrderedDict())
        sent[model] = None
        sent.move_to_end(model)
        while len(sent) > SENT_PER_SLOT * slots:
            sent.popitem(last=False)

    def on_endpoints_removed(self, endpoints: Sequence[Endpoint]) -> None:
        for endpoint in endpoints:
            self._sent.pop(endpoint, None)

    def _learn(self, names: Iterable[str]) -> None:
        known = self._known
        for name in names:
            if name in known:
                continue
            known[name] = None
            if len(known) > KNOWN_ADAPTERS:
                known.popitem(last=False)

    def _resident(self, endpoint: Endpoint, adapter: str) -> bool:
        """Whether vLLM's GPU LRU likely holds ``adapter``: running adapters first, then
        those epp sent most recently, ``max_lora`` in all."""
        sent = self._sent.get(endpoint)
        if not sent or adapter not in sent:
            return False
        metrics = endpoint.metrics
        room = (metrics.max_lora or 0) - len(metrics.lora_running)
        known = self._known
        for name in reversed(sent):
            if room <= 0:
                return False
            if name in metrics.lora_running or name not in known:
                continue  # counted already, or not an adapter (as far as anyone said)
            if name == adapter:
                return True
            room -= 1
        return False


def _no_lora_info(endpoints: Sequence[Endpoint]) -> bool:
    """No candidate reports LoRA info (one C-level count rather than a call each)."""
    max_loras = [ep.metrics.max_lora for ep in endpoints]
    return max_loras.count(None) == len(max_loras)


def factory(name: str, parameters: Mapping[str, Any]) -> LoraAffinityScorer:
    params = Params(TypedName(TYPE, name), parameters)
    predict = params.get_bool("predictResidency", True)
    params.finish()
    return LoraAffinityScorer(name, predict_residency=predict)


_: type[Scorer] = LoraAffinityScorer
_adder: type[ScoreAdder] = LoraAffinityScorer
_post: type[PostPick] = LoraAffinityScorer
_removal: type[EndpointRemovalHook] = LoraAffinityScorer
