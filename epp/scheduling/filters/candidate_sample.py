"""``candidate-sample-filter``: score a bounded random sample of a large pool.

Each scorer reads every candidate, so a decision's cost grows with the pool: about
0.4 µs per endpoint in the default profile, 0.4 ms at 1,024 endpoints. Past
``sampleSize`` candidates (256) this filter keeps

- the candidates the profile's scorers favour (:class:`~epp.scheduling.types.AffinityHint`):
  the pods holding the prompt's longest cached prefix, the pod a session token names;
- and a random share of the others: every ``step``-th candidate from a random offset,
  ``step = ceil(candidates / room left)``, so every candidate is kept with the same
  probability, ``1/step``, and the sample spreads over the whole list (pods listed
  side by side, such as one rollout's, are not kept or dropped together).

The load scorers then pick the least loaded of a few hundred random pods, which is
nearly always among the least loaded of all: the "power of d choices" that Envoy's
``LEAST_REQUEST`` balancer uses with d = 2. A pool of at most ``sampleSize`` candidates
passes whole, as if the filter were not there. ``sampleSize: 0`` turns it off.

LoRA adapters are not hinted (finding the pods that run one is a pass over the pool):
in a pool larger than the sample, an adapter request is sent where the adapter runs if
one of those pods is sampled, which with ``k`` such pods of ``n`` fails with
probability about ``(1 - 256/n) ** k``.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import NamedPlugin, Params
from epp.scheduling.types import (
    AffinityHint,
    CycleState,
    Filter,
    LLMRequest,
    PeerAware,
    Plugin,
    TypedName,
)

__all__ = ["DEFAULT_SAMPLE_SIZE", "TYPE", "CandidateSampleFilter", "factory"]

TYPE = "candidate-sample-filter"
# Where a decision costs about 0.15 ms (issue 10's 256-endpoint figure) and a sample
# still holds, with near certainty, a pod among the least loaded few percent.
DEFAULT_SAMPLE_SIZE = 256
# Up to this many hinted endpoints are checked against the candidates one by one (a
# C scan each); more, and one set of the candidates is cheaper.
_SCAN_HINTS_BELOW = 8


class CandidateSampleFilter(NamedPlugin):
    """Keeps at most ``sample_size`` candidates: the hinted ones, then a spread random
    share of the rest (see the module docstring). ``hints`` are bound from the
    configured plugins (:meth:`bind`) or given."""

    __slots__ = ("_hints", "_rng", "_sample_size")

    TYPE = TYPE

    def __init__(
        self,
        name: str | None = None,
        *,
        sample_size: int = DEFAULT_SAMPLE_SIZE,
        hints: Sequence[AffinityHint] = (),
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(name)
        if sample_size < 0:
            raise ValueError(f"sample_size must be >= 0, got {sample_size}")
        self._sample_size = sample_size
        self._hints = tuple(hints)
        self._rng = rng if rng is not None else random.Random()

    @property
    def sample_size(self) -> int:
        return self._sample_size

    @property
    def hints(self) -> tuple[AffinityHint, ...]:
        return self._hints

    def bind(self, peers: Mapping[str, Plugin]) -> None:
        """Take every configured plugin that can hint (the prefix and session scorers)."""
        self._hints = tuple(p for p in peers.values() if isinstance(p, AffinityHint))

    def filter(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        size = self._sample_size
        n = len(endpoints)
        if size == 0 or n <= size:
            return endpoints
        kept = self._hinted(cycle, request, endpoints)
        if len(kept) >= size:  # more favoured than room: a spread share of them
            return self._spread(kept, size)
        sample = self._spread(endpoints, size - len(kept))
        if not kept:
            return sample
        favoured = set(kept)
        return kept + [ep for ep in sample if ep not in favoured]

    def _hinted(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[Endpoint]:
        named: list[Endpoint] = []
        for hint in self._hints:
            found: Collection[Endpoint] = hint.preferred(cycle, request, endpoints)
            if found:
                named.extend(found)
        if not named:
            return []
        if len(named) > 1:
            named = list(dict.fromkeys(named))  # one each, first hint's order
        if len(named) < _SCAN_HINTS_BELOW:
            return [ep for ep in named if ep in endpoints]
        candidates = set(endpoints)
        return [ep for ep in named if ep in candidates]

    def _spread(self, endpoints: Sequence[Endpoint], room: int) -> list[Endpoint]:
        """At most ``room`` of ``endpoints``, each kept with probability ``1/step``."""
        step = -(-len(endpoints) // room)
        return list(endpoints[self._rng.randrange(step) :: step])


def factory(name: str, parameters: Mapping[str, Any]) -> CandidateSampleFilter:
    params = Params(TypedName(TYPE, name), parameters)
    sample_size = params.get_int("sampleSize", DEFAULT_SAMPLE_SIZE, min_value=0)
    seed = params.get_optional_int("seed")
    params.finish()
    rng = random.Random(seed) if seed is not None else None
    return CandidateSampleFilter(name, sample_size=sample_size, rng=rng)


_: type[Filter] = CandidateSampleFilter
_peer: type[PeerAware] = CandidateSampleFilter
