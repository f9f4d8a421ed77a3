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

vLLM's metric names the adapters of running and waiting *requests*, not those loaded:
once an adapter's requests end, every endpoint looks alike (a free slot, 0.8), and
the next request for it lands anywhere and loads it again, evicting another. So, unless
``predictResidency`` is false (the reference's behaviour), the scorer also remembers the
adapters epp itself sent to each endpoint, most recent last, and predicts what vLLM's
LRU of ``max_lora`` GPU slots holds: the adapters running there now, then the most
recently sent others that the endpoints have reported as adapters at some time (the base
model never appears in the metric, and it holds no slot), ``max_lora`` in all. A
predicted adapter scores 1.0 like a running one. Memory is bounded whatever clients send:
``SENT_PER_SLOT`` names per slot per endpoint, and ``KNOWN_ADAPTERS`` learned names.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.types import (
    CycleState,
    EndpointRemovalHook,
    LLMRequest,
    PostPick,
    Scorer,
    TypedName,
)

__all__ = ["KNOWN_ADAPTERS", "SENT_PER_SLOT", "TYPE", "LoraAffinityScorer", "factory"]

TYPE = "lora-affinity-scorer"
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

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        adapter = request.model
        if self._predict:
            for endpoint in endpoints:
                self._learn(endpoint.metrics.lora_running, endpoint.metrics.lora_waiting)
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
        return scores

    def on_pick(self, cycle: CycleState, request: LLMRequest, chosen: Endpoint) -> None:
        model = request.model
        max_lora = chosen.metrics.max_lora
        if not self._predict or not max_lora:
            return
        sent = self._sent.setdefault(chosen, OrderedDict())
        sent[model] = None
        sent.move_to_end(model)
        while len(sent) > SENT_PER_SLOT * max_lora:
            sent.popitem(last=False)

    def on_endpoints_removed(self, endpoints: Sequence[Endpoint]) -> None:
        for endpoint in endpoints:
            self._sent.pop(endpoint, None)

    def _learn(self, running: frozenset[str], waiting: frozenset[str]) -> None:
        known = self._known
        for name in (*running, *waiting):
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


def factory(name: str, parameters: Mapping[str, Any]) -> LoraAffinityScorer:
    params = Params(TypedName(TYPE, name), parameters)
    predict = params.get_bool("predictResidency", True)
    params.finish()
    return LoraAffinityScorer(name, predict_residency=predict)


_: type[Scorer] = LoraAffinityScorer
_post: type[PostPick] = LoraAffinityScorer
_removal: type[EndpointRemovalHook] = LoraAffinityScorer
