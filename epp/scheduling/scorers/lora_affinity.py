"""``lora-affinity-scorer``: prefer endpoints where the requested LoRA adapter is loaded.

Reads what the data layer scrapes from ``vllm:lora_requests_info`` (``Metrics.
lora_running``, ``lora_waiting``, ``max_lora``), for the model the request is sent as
(after any rewrite). The reference's scores, checked in its order:

=====  =====================================================================
1.0    the adapter is running on the endpoint
0.8    it is not, but the endpoint has a free adapter slot (running + waiting
       adapters < ``max_lora``)
0.6    it is waiting to be loaded there (and no slot is free)
0.0    no slot is free and the adapter is neither running nor waiting
=====  =====================================================================

An endpoint that reports no LoRA info has no slots (``max_lora`` unknown counts as 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.types import CycleState, LLMRequest, Scorer, TypedName

__all__ = ["TYPE", "LoraAffinityScorer", "factory"]

TYPE = "lora-affinity-scorer"


class LoraAffinityScorer(NamedPlugin):
    """See the module docstring for the scores."""

    __slots__ = ()

    TYPE = TYPE

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        adapter = request.model
        scores: list[float] = []
        for endpoint in endpoints:
            metrics = endpoint.metrics
            running, waiting = metrics.lora_running, metrics.lora_waiting
            if adapter in running:
                scores.append(1.0)
            elif len(running) + len(waiting) < (metrics.max_lora or 0):
                scores.append(0.8)
            elif adapter in waiting:
                scores.append(0.6)
            else:
                scores.append(0.0)
        return scores


def factory(name: str, parameters: Mapping[str, Any]) -> LoraAffinityScorer:
    Params(TypedName(TYPE, name), parameters).finish()
    return LoraAffinityScorer(name)


_: type[Scorer] = LoraAffinityScorer
